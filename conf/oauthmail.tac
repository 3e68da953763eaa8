"""Run oauthmail inside your own Twisted application: ``twistd -ny conf/oauthmail.tac``.

The same service that ``twistd oauthmail`` builds, attached to an application
that can hold your other services too.
"""

from twisted.application import service

from oauthmail.tap import Options, makeService

options = Options()
options.parseOptions(["--config", "conf/app.yaml"])

application = service.Application("oauthmail")
makeService(options).setServiceParent(application)
