"""Reading the daemon's own sections: ``store``, ``web``, ``refresher``, ``queue``, ``submission``,
``cluster``.

Each reader takes the section's node and returns its frozen value with the
documented defaults filled in; an absent section is all defaults (and no
submission server at all).

Rule: a secret (``dsn``, ``key``, a password hash) is checked without ever
being repeated in a message.
"""

from __future__ import annotations

from collections.abc import Iterable

from oauthmail.config.model import (
    AccountConfig,
    ClusterConfig,
    QueueConfig,
    RefresherConfig,
    StoreConfig,
    SubmissionConfig,
    SubmissionUser,
    WebConfig,
)
from oauthmail.config.nodes import Node, suggest
from oauthmail.config.schema import (
    BACKENDS,
    CLUSTER_KEYS,
    QUEUE_KEYS,
    REFRESHER_KEYS,
    STORE_KEYS,
    SUBMISSION_KEYS,
    SUBMISSION_USER_KEYS,
    WEB_KEYS,
)
from oauthmail.config.values import isAddress, isFernetKey
from oauthmail.hosts import parseAllowedHost
from oauthmail.loopback import isLoopbackHost
from oauthmail.passwords import parseHash

__all__ = [
    "readCluster",
    "readQueue",
    "readRefresher",
    "readStore",
    "readSubmission",
    "readWeb",
]


def _passwordHash(node: Node) -> str:
    """An scrypt hash (checked, never shown in an error) from ``oauthmail hash-password``."""
    password_hash = node.nonEmpty(what="an scrypt hash from 'oauthmail hash-password'")
    try:
        parseHash(password_hash)
    except ValueError:
        node.fail("expected an scrypt hash from 'oauthmail hash-password'; the value is not shown")
    return password_hash


def readStore(at: Node) -> StoreConfig:
    if at.isNull:
        return StoreConfig()
    s = at.mapping(STORE_KEYS, what="a mapping (backend, path, ...)")
    backend = s["backend"].choice(BACKENDS, "sqlite", what="store backend")
    defaults = StoreConfig()
    path = defaults.path
    dsn = None
    if backend == "sqlite":
        if "dsn" in s:
            s["dsn"].fail("dsn is only used with backend: postgresql")
        path = s["path"].nonEmpty(defaults.path, what="a file name")
    else:
        if "path" in s:
            s["path"].fail("path is only used with backend: sqlite")
        dsn = s["dsn"].secret()
        if dsn is None:
            s["dsn"].fail(
                "backend postgresql needs a dsn such as ${OAUTHMAIL_DSN}"
                if s["dsn"].missing
                else "expected a PostgreSQL connection string, got an empty one"
            )
    key = s["key"].secret()
    if key is not None and not isFernetKey(key):
        s["key"].fail(
            "expected a Fernet key (32 bytes in URL-safe base64, as made by"
            " Fernet.generate_key()); the value is not shown"
        )
    key_file = s["key_file"].nonEmpty(defaults.key_file, what="a file name")
    return StoreConfig(backend=backend, path=path, dsn=dsn, key=key, key_file=key_file)


def readWeb(at: Node) -> WebConfig:
    if at.isNull:
        return WebConfig()
    w = at.mapping(WEB_KEYS, what="a mapping (bind, port, ...)")
    defaults = WebConfig()
    bind = w["bind"].nonEmpty(defaults.bind, what="an address to listen on").strip()
    if not isAddress(bind) and bind != "localhost":
        w["bind"].fail(f"expected an IP address such as 127.0.0.1, got {bind!r}")
    port = w["port"].integer(0, 65535, defaults.port)
    hosts = (
        w["allowed_hosts"].stringList(what="a list of host names") if "allowed_hosts" in w else ()
    )
    for entry in hosts:
        try:
            parseAllowedHost(entry)
        except ValueError as e:
            w["allowed_hosts"].fail(str(e))
    password_hash = None
    if "admin_password_hash" in w:
        password_hash = _passwordHash(w["admin_password_hash"])
    if not isLoopbackHost(bind) and password_hash is None:
        w["bind"].fail(
            f"{bind} is not loopback: set web.admin_password_hash (make one with"
            " 'oauthmail hash-password') so the console asks for a login, or bind to 127.0.0.1"
        )
    return WebConfig(
        bind=bind,
        port=port,
        allowed_hosts=hosts,
        admin_password_hash=password_hash,
        session_lifetime=w["session_lifetime"].duration(defaults.session_lifetime, positive=True),
    )


def readRefresher(at: Node) -> RefresherConfig:
    if at.isNull:
        return RefresherConfig()
    r = at.mapping(REFRESHER_KEYS, what="a mapping (interval, margin, ...)")
    defaults = RefresherConfig()
    notify: tuple[str, ...] = ()
    if r.present("notify_command"):
        n = r["notify_command"]
        if isinstance(n.value(), str):
            n.fail("expected a list of arguments such as [notify-send, oauthmail]")
        notify = n.stringList(what="a list of arguments")
    return RefresherConfig(
        interval=r["interval"].duration(defaults.interval, positive=True),
        margin=r["margin"].duration(defaults.margin),
        concurrency=r["concurrency"].integer(1, 1000, defaults.concurrency),
        notify_command=notify,
    )


def readQueue(at: Node) -> QueueConfig:
    if at.isNull:
        return QueueConfig()
    q = at.mapping(QUEUE_KEYS, what="a mapping (max_age, retry_min, retry_max, bounce, ...)")
    defaults = QueueConfig()
    retry_min = q["retry_min"].duration(defaults.retry_min, positive=True)
    retry_max = q["retry_max"].duration(defaults.retry_max, positive=True)
    if retry_max < retry_min:
        q["retry_max"].fail("must not be shorter than retry_min")
    return QueueConfig(
        max_age=q["max_age"].duration(defaults.max_age, positive=True),
        retry_min=retry_min,
        retry_max=retry_max,
        bounce=q["bounce"].boolean(defaults.bounce),
        sent_check_delay=q["sent_check_delay"].duration(defaults.sent_check_delay),
        sent_check_give_up=q["sent_check_give_up"].duration(
            defaults.sent_check_give_up, positive=True
        ),
        control_socket=q["control_socket"].nonEmpty(
            defaults.control_socket, what="a file name for the control socket"
        ),
    )


def readCluster(at: Node) -> ClusterConfig:
    if at.isNull:
        return ClusterConfig()
    c = at.mapping(CLUSTER_KEYS, what="a mapping (node, lease_renew, lease_expiry, claim_expiry)")
    defaults = ClusterConfig()
    node = c["node"].nonEmpty(defaults.node, what="a node name")
    if node != node.strip() or any(ch.isspace() or ch == "/" for ch in node):
        c["node"].fail(f"expected a name without spaces or '/', got {node!r}")
    renew = c["lease_renew"].duration(defaults.lease_renew, positive=True)
    expiry = c["lease_expiry"].duration(defaults.lease_expiry, positive=True)
    if expiry < 2 * renew:
        (c["lease_expiry"] if c.present("lease_expiry") else c["lease_renew"]).fail(
            f"a lease must last at least two heartbeats: lease_expiry ({expiry:g} s) must be"
            f" at least twice lease_renew ({renew:g} s)"
        )
    return ClusterConfig(
        node=node,
        lease_renew=renew,
        lease_expiry=expiry,
        claim_expiry=c["claim_expiry"].duration(defaults.claim_expiry, positive=True),
    )


def readSubmission(at: Node, accounts: Iterable[AccountConfig]) -> SubmissionConfig | None:
    if at.missing or at.isNull:
        return None
    m = at.mapping(SUBMISSION_KEYS, what="a mapping (bind, port, users, ...)")
    defaults = SubmissionConfig()
    bind = m["bind"].nonEmpty(defaults.bind, what="an address to listen on").strip()
    if not isAddress(bind) and bind != "localhost":
        m["bind"].fail(f"expected an IP address such as 127.0.0.1, got {bind!r}")
    known = {a.name for a in accounts}
    users = []
    seen: set[str] = set()
    for item in m["users"].sequence(what="a list of users") if m.present("users") else []:
        u = item.mapping(SUBMISSION_USER_KEYS, what="a mapping (name, password_hash, ...)")
        name = u["name"].nonEmpty(what="a user name").strip()
        if name in seen:
            u["name"].fail(f"user {name!r} is defined twice")
        seen.add(name)
        password_hash = _passwordHash(u["password_hash"])
        senders = u["allowed_senders"].stringList(what="a list of account names")
        for sender in senders:
            if sender not in known:
                u["allowed_senders"].fail(
                    f"no account named {sender!r}{suggest(sender, sorted(known))}"
                )
        users.append(SubmissionUser(name, password_hash, senders))
    cert = m["tls_cert"].string(None, what="a certificate file")
    key = m["tls_key"].string(None, what="a key file")
    if (cert is None) != (key is None):
        (m["tls_key"] if cert is not None else m["tls_cert"]).fail(
            "tls_cert and tls_key go together"
        )
    require_tls = m["require_tls"].boolean(defaults.require_tls)
    if require_tls and cert is None:
        m["require_tls"].fail("require_tls needs tls_cert and tls_key")
    penaltyBase = m["auth_penalty_base"].duration(defaults.auth_penalty_base, positive=True)
    penaltyMax = m["auth_penalty_max"].duration(defaults.auth_penalty_max)
    if penaltyMax < penaltyBase:
        m["auth_penalty_max"].fail("must not be shorter than auth_penalty_base")
    return SubmissionConfig(
        bind=bind,
        port=m["port"].integer(0, 65535, defaults.port),
        users=tuple(users),
        allow_unauthenticated_loopback=m["allow_unauthenticated_loopback"].boolean(
            defaults.allow_unauthenticated_loopback
        ),
        max_message_size=m["max_message_size"].integer(1024, 2**31 - 1, defaults.max_message_size),
        tls_cert=cert,
        tls_key=key,
        require_tls=require_tls,
        max_connections=m["max_connections"].integer(1, 100000, defaults.max_connections),
        max_connections_per_address=m["max_connections_per_address"].integer(
            1, 100000, defaults.max_connections_per_address
        ),
        idle_timeout=m["idle_timeout"].duration(defaults.idle_timeout, positive=True),
        auth_penalty_base=penaltyBase,
        auth_penalty_max=penaltyMax,
        auth_failures_before_block=m["auth_failures_before_block"].integer(
            1, 100000, defaults.auth_failures_before_block
        ),
        auth_failure_window=m["auth_failure_window"].duration(
            defaults.auth_failure_window, positive=True
        ),
        auth_block=m["auth_block"].duration(defaults.auth_block, positive=True),
    )
