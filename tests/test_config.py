"""Tests for oauthmail.config: good files load into the right objects, bad ones fail in one line.

The broken configurations live in ``tests/configs/broken/``; each file's first
line is ``# expect: {file}:LINE: key.path: message``, the exact error the
loader must give. ``tests/test_cli_check_config.py`` runs the same table
through the command line.
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oauthmail import providers
from oauthmail.config import (
    Config,
    ConfigError,
    DurationError,
    InterpolationError,
    ProfileConfig,
    ServerConfig,
    allowsDeviceGrant,
    deviceGrantProblem,
    interpolate,
    loadConfig,
    parseConfig,
    parseDuration,
)
from oauthmail.secret import Secret

CONFIGS = Path(__file__).parent / "configs"
BROKEN = sorted((CONFIGS / "broken").glob("*.yaml"))
ROOT = Path(__file__).parent.parent

#: The environment the broken table runs with.
BROKEN_ENV = {"OAUTHMAIL_TEST_SET": "value"}

#: Values in the broken files that must never appear in an error.
SECRET_MARKER = "hunter2-not-shown"

FERNET_KEY = "ZmDfcTF7_60GrrY167zsiPd67pEvs0aGOv2oasOM1Pg="


def expected(path: Path, shownAs: str) -> str:
    """The ``# expect:`` line of a broken file, for the file name ``shownAs``."""
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first[len("# expect: ") :].replace("{file}", shownAs)


def test_broken_table_is_large_enough():
    """The broken-configuration table covers at least 30 cases."""
    assert len(BROKEN) >= 30


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_config_exact_message(path):
    """Each broken configuration fails with exactly its one-line message."""
    with pytest.raises(ConfigError) as info:
        loadConfig(str(path), environ=BROKEN_ENV)
    message = str(info.value)
    assert message == expected(path, str(path))
    assert "\n" not in message
    assert SECRET_MARKER not in message


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_config_error_carries_line(path):
    """ConfigError carries the same line and source as its message."""
    with pytest.raises(ConfigError) as info:
        loadConfig(str(path), environ=BROKEN_ENV)
    error = info.value
    assert error.source == str(path)
    match = re.match(r"[^:]*:(\d+): ", str(error))
    assert match is not None
    assert error.line == int(match.group(1))


def test_file_named_as_given(tmp_path, monkeypatch):
    """The message names the file exactly as the caller spelt the path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text("web:\n  port: imaps\n")
    with pytest.raises(ConfigError) as info:
        loadConfig("conf/app.yaml", environ={})
    assert str(info.value) == (
        "conf/app.yaml:2: web.port: expected an integer from 0 to 65535, got 'imaps'"
    )


def test_missing_file_is_one_line(tmp_path):
    """A missing configuration file is a one-line error naming it."""
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        loadConfig(path, environ={})
    assert str(info.value) == (
        f"{path}: cannot read the configuration file: No such file or directory"
    )


def test_directory_is_one_line(tmp_path):
    """A directory given as the configuration file is a one-line error."""
    with pytest.raises(ConfigError) as info:
        loadConfig(str(tmp_path), environ={})
    assert str(info.value).startswith(f"{tmp_path}: cannot read the configuration file: ")
    assert "\n" not in str(info.value)


def test_not_utf8_is_one_line(tmp_path):
    """A file that is not UTF-8 names the line of the first bad byte."""
    path = tmp_path / "app.yaml"
    path.write_bytes(b"web:\n  bind: \xff\n")
    with pytest.raises(ConfigError) as info:
        loadConfig(str(path), environ={})
    assert str(info.value) == f"{path}:2: invalid YAML: the file is not UTF-8 text"


def test_secret_value_never_in_type_error():
    """A secret of the wrong type is reported without its value."""
    text = "profiles:\n  g:\n    provider: google\n    client_id: abc\n    client_secret: 12345\n"
    config = parseConfig(text, "x.yaml", {})
    assert config.profiles["g"].client_secret == Secret("12345")
    text = "store:\n  backend: postgresql\n  dsn: {password: hunter2-not-shown}\n"
    with pytest.raises(ConfigError) as info:
        parseConfig(text, "x.yaml", {})
    assert str(info.value) == "x.yaml:3: store.dsn: expected a string, got a mapping"


def test_interpolated_secret_never_in_error():
    """A Fernet key that came from the environment is rejected without being shown."""
    text = "store:\n  key: ${OAUTHMAIL_TEST_KEY}\n"
    with pytest.raises(ConfigError) as info:
        parseConfig(text, "x.yaml", {"OAUTHMAIL_TEST_KEY": SECRET_MARKER})
    assert SECRET_MARKER not in str(info.value)


@pytest.fixture(scope="module")
def caPEM(tmp_path_factory) -> bytes:
    """A real CA certificate (the loader checks that a ``ca_file`` holds one)."""
    from oauthmail.testing.certs import generateTestCertificates

    return generateTestCertificates(tmp_path_factory.mktemp("certs")).caFile.read_bytes()


@pytest.fixture
def fullEnv(tmp_path, caPEM):
    """The environment ``tests/configs/good/full.yaml`` needs."""
    secret = tmp_path / "google-secret"
    secret.write_text("google-secret-value\n")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(caPEM)
    return {
        "OAUTHMAIL_TEST_GOOGLE_ID": "1234-abc.apps.googleusercontent.com",
        "OAUTHMAIL_TEST_SECRET_FILE": str(secret),
        "OAUTHMAIL_TEST_MS_SECRET": "ms-secret-value",
        "OAUTHMAIL_TEST_CA_FILE": str(ca),
        "OAUTHMAIL_TEST_DSN": "postgresql://oauthmail@db.example.com/oauthmail",
        "OAUTHMAIL_TEST_KEY": FERNET_KEY,
        "OAUTHMAIL_TEST_UNSET": "",
    }


@pytest.fixture
def full(fullEnv) -> Config:
    """``tests/configs/good/full.yaml`` loaded."""
    return loadConfig(str(CONFIGS / "good" / "full.yaml"), environ=fullEnv)


def test_google_preset_applied(full):
    """A google profile gets Google's endpoints, scope, parameters and servers."""
    gmail = full.profiles["gmail"]
    assert gmail.kind == "google"
    assert gmail.authorization_endpoint == "https://accounts.google.com/o/oauth2/v2/auth"
    assert gmail.token_endpoint == "https://oauth2.googleapis.com/token"
    assert gmail.revocation_endpoint == "https://oauth2.googleapis.com/revoke"
    assert gmail.device_endpoint == "https://oauth2.googleapis.com/device/code"
    # openid email: the token answer's ID token says who consented
    assert gmail.scopes == ("https://mail.google.com/", "openid", "email")
    assert gmail.userinfo_endpoint == "https://openidconnect.googleapis.com/v1/userinfo"
    assert dict(gmail.extra_authorization_params) == {
        "access_type": "offline",
        "prompt": "consent",
    }
    assert gmail.imap == ServerConfig("imap.gmail.com", 993, "implicit")


def test_preset_server_partly_overridden(full):
    """Overriding only the port of a preset server keeps its host and fits the security."""
    assert full.profiles["gmail"].smtp == ServerConfig("smtp.gmail.com", 465, "implicit")


def test_secret_file_read_and_stripped(full):
    """client_secret_file is read, its trailing newline stripped, and kept as a Secret."""
    secret = full.profiles["gmail"].client_secret
    assert isinstance(secret, Secret)
    assert secret.reveal() == "google-secret-value"


def test_microsoft_preset_with_tenant(full):
    """A microsoft profile puts its tenant in every endpoint."""
    work = full.profiles["work"]
    base = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0"
    assert work.authorization_endpoint == f"{base}/authorize"
    assert work.token_endpoint == f"{base}/token"
    assert work.device_endpoint == f"{base}/devicecode"
    assert work.tenant == "contoso.onmicrosoft.com"
    assert work.scopes == providers.MICROSOFT_DELEGATED_SCOPES
    assert work.scopes == (
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "https://outlook.office.com/SMTP.Send",
        "offline_access",
        "openid",
        "email",
        "profile",
    )
    assert work.userinfo_endpoint is None  # the ID token says it (preferred_username, email)
    assert work.imap == ServerConfig("outlook.office365.com", 993, "implicit")
    assert work.smtp == ServerConfig("smtp.office365.com", 587, "starttls")
    assert work.client_secret == Secret("ms-secret-value")


def test_microsoft_app_only_account_gets_default_scope(full):
    """A client_credentials account on a microsoft profile requests the .default scope."""
    app = full.account("app")
    assert app.grant == "client_credentials"
    assert app.profile.scopes == ("https://outlook.office365.com/.default",)
    assert app.sasl_user == "shared@contoso.com"
    assert app.imap.sink.kind == "command"
    assert app.imap.sink.command == ("/usr/local/bin/deliver", "--queue", "helpdesk")
    assert app.imap.sink.timeout == 120.0


def test_microsoft_default_tenant_is_common():
    """A microsoft profile without tenant uses 'common'."""
    config = parseConfig("profiles:\n  m: {provider: microsoft, client_id: x}\n", "x.yaml", {})
    assert config.profiles["m"].tenant == "common"
    assert "/common/oauth2/v2.0/token" in config.profiles["m"].token_endpoint


def test_generic_profile_on_loopback(full):
    """A generic profile may use http on loopback hosts and takes every value as given."""
    local = full.profiles["local"]
    assert local.kind == "generic"
    assert local.authorization_endpoint == "http://127.0.0.1:8443/authorize"
    assert local.token_endpoint == "http://localhost:8443/token"
    assert local.device_endpoint == "http://[::1]:8443/device"
    assert local.revocation_endpoint is None
    assert local.introspection_endpoint == "https://auth.example.com/introspect"
    assert local.client_id == "local-client"  # ${VAR:-default} with VAR empty
    assert local.scopes == ("mail", "offline_access")
    assert local.userinfo_endpoint is None  # generic: only when the profile names one
    assert local.extra_authorization_params == (("audience", "mail"),)
    assert local.redirect_uri == "http://127.0.0.1:8025/callback"
    assert local.imap.port == 10993  # an unquoted ${...} that expands to a number is a number
    assert local.imap.server_name == "imap.test"
    assert local.imap.ca_file.endswith("ca.pem")
    assert local.smtp == ServerConfig("127.0.0.1", 10587, "starttls", tls="insecure")


def test_account_folders_sinks_and_defaults(full):
    """Folders, sinks and per-account settings load with their defaults filled in."""
    helpdesk = full.account("helpdesk")
    assert helpdesk.grant == "authorization_code"
    assert helpdesk.sasl_user == "helpdesk@example.com"
    assert [(f.name, f.disposition, f.move_to) for f in helpdesk.imap.folders] == [
        ("INBOX", "seen", None),
        ("Support", "move", "Support/Done"),
        ("Spam", "keep", None),
    ]
    assert helpdesk.imap.sink.kind == "maildir"
    assert helpdesk.imap.sink.path == "var/mail/helpdesk"
    assert helpdesk.imap.poll_interval == 300.0
    assert helpdesk.imap.idle is False
    assert helpdesk.imap.mechanism == "xoauth2"
    assert helpdesk.smtp.mechanism == "xoauth2"
    dev = full.account("dev")
    assert dev.imap.mechanism == "oauthbearer"
    assert dev.smtp.mechanism == "oauthbearer"
    assert dev.imap.sink.url == "https://hooks.example.com/mail"
    assert dev.imap.sink.timeout == 30.0
    assert dev.imap.batch_size == 10
    assert dev.imap.folders[0].name == "INBOX"
    assert dev.smtp is not None
    assert full.account("py").imap.sink.object == "mypkg.sinks:deliver"


def test_account_server_override(full):
    """An account's own imap host overrides its profile's, and only for that account."""
    assert full.account("py").profile.imap.host == "127.0.0.2"
    assert full.account("py").profile.imap.port == 10993
    assert full.profiles["local"].imap.host == "127.0.0.1"


def test_store_web_refresher(full):
    """The store, web and refresher sections load, durations in seconds."""
    assert full.store.backend == "postgresql"
    assert full.store.dsn == Secret("postgresql://oauthmail@db.example.com/oauthmail")
    assert full.store.key == Secret(FERNET_KEY)
    assert full.web.bind == "::1"
    assert full.web.port == 0
    assert full.refresher.interval == 30.0
    assert full.refresher.margin == 5400.0
    assert full.refresher.concurrency == 4
    assert full.refresher.notify_command == ("notify-send", "oauthmail")


def test_secrets_do_not_leak_through_repr(full, fullEnv):
    """repr of the whole loaded configuration shows no secret value."""
    text = repr(full)
    for name in ("OAUTHMAIL_TEST_MS_SECRET", "OAUTHMAIL_TEST_DSN", "OAUTHMAIL_TEST_KEY"):
        assert fullEnv[name] not in text
    assert "google-secret-value" not in text


def test_defaults_for_minimal_config():
    """Sections left out take their documented defaults."""
    config = parseConfig(
        "profiles:\n  g: {provider: google, client_id: ''}\n"
        "accounts:\n  - {name: a, address: a@example.com, profile: g, imap: }\n",
        "x.yaml",
        {},
    )
    assert config.store.backend == "sqlite"
    assert config.store.path == "var/oauthmail.sqlite"
    assert config.store.key_file == "var/oauthmail.key"
    assert config.store.dsn is None and config.store.key is None
    assert (config.web.bind, config.web.port) == ("127.0.0.1", 8025)
    assert config.refresher.interval == 60.0
    assert config.refresher.margin == 900.0
    assert config.refresher.concurrency == 10
    assert config.refresher.notify_command == ()
    account = config.account("a")
    assert not account.configured
    assert account.imap.folders[0].name == "INBOX"
    assert account.imap.sink.path == "var/mail/a"
    assert account.smtp is None


def test_empty_client_id_is_not_configured():
    """A profile with an empty client_id loads, and its accounts are not configured."""
    config = parseConfig(
        "profiles:\n  g: {provider: google, client_id: '${GID:-}'}\n"
        "accounts:\n  - {name: a, address: a@example.com, profile: g}\n",
        "x.yaml",
        {},
    )
    assert config.account("a").configured is False
    config = parseConfig(
        "profiles:\n  g: {provider: google, client_id: '${GID:-}', client_secret: s}\n"
        "accounts:\n  - {name: a, address: a@example.com, profile: g}\n",
        "x.yaml",
        {"GID": "id"},
    )
    assert config.account("a").configured is True


def test_numeric_client_id_kept_as_written():
    """A client_id YAML would read as a number keeps the digits as written."""
    config = parseConfig("profiles:\n  g: {provider: google, client_id: 0123}\n", "x.yaml", {})
    assert config.profiles["g"].client_id == "0123"


def test_yaml_anchors_and_merge_keys():
    """Anchors and merge keys work, so profiles can share settings."""
    config = parseConfig(
        "profiles:\n"
        "  base: &base {provider: microsoft, client_id: x, tenant: contoso.com}\n"
        "  other:\n    <<: *base\n    client_id: y\n",
        "x.yaml",
        {},
    )
    assert config.profiles["other"].tenant == "contoso.com"
    assert config.profiles["other"].client_id == "y"


def test_dollar_escape_in_values():
    """``$$`` is a literal dollar and a lone ``$`` is kept."""
    config = parseConfig("profiles:\n  g: {provider: google, client_id: 'a$$b$c'}\n", "x.yaml", {})
    assert config.profiles["g"].client_id == "a$b$c"


def test_shipped_example_loads_with_empty_environment():
    """conf/app.yaml loads with no environment variable set, every account not configured."""
    config = loadConfig(str(ROOT / "conf" / "app.yaml"), environ={})
    assert {p.kind for p in config.profiles.values()} >= {"google", "microsoft"}
    assert config.accounts
    assert all(not account.configured for account in config.accounts)
    assert config.store.path == "var/oauthmail.sqlite"
    assert (config.web.bind, config.web.port) == ("127.0.0.1", 8025)
    assert config.refresher.margin == 900.0


def test_shipped_example_configured_by_environment():
    """Setting the client id variables makes the example's accounts configured."""
    config = loadConfig(
        str(ROOT / "conf" / "app.yaml"),
        environ={"GOOGLE_CLIENT_ID": "g-id", "GOOGLE_CLIENT_SECRET": "g-s", "MS_CLIENT_ID": "m-id"},
    )
    assert all(account.configured for account in config.accounts)


def test_presets_reject_unknown_kind():
    """providers.preset only knows the three provider kinds."""
    assert providers.preset("google").kind == "google"
    assert providers.preset("microsoft", "contoso.com").tenant == "contoso.com"
    with pytest.raises(KeyError):
        providers.preset("yahoo")


# --- interpolation and durations: pure parsers, property-tested ----------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(texts)
def test_interpolate_without_dollar_is_identity(text):
    """Text without a dollar sign comes out unchanged."""
    text = text.replace("$", "")
    assert interpolate(text, {}) == text


@given(texts)
def test_interpolate_escaped_dollars(text):
    """Doubling every dollar sign gives the text back, whatever it contains."""
    assert interpolate(text.replace("$", "$$"), {}) == text


@given(names, texts, texts, texts)
def test_interpolate_substitutes_verbatim(name, value, before, after):
    """${NAME} becomes the variable's value, which is never expanded again."""
    before = before.replace("$", "$$")
    after = after.replace("$", "$$")
    result = interpolate(f"{before}${{{name}}}{after}", {name: value})
    assert result == interpolate(before, {}) + value + interpolate(after, {})


@given(names, texts.filter(lambda t: "}" not in t), st.sampled_from([None, ""]))
def test_interpolate_default_when_unset_or_empty(name, default, value):
    """${NAME:-default} gives the default when NAME is unset or empty."""
    environ = {} if value is None else {name: value}
    assert interpolate(f"${{{name}:-{default}}}", environ) == default


@given(names)
def test_interpolate_unset_is_an_error(name):
    """${NAME} with NAME unset is an error naming NAME, never a silent empty string."""
    with pytest.raises(InterpolationError, match=f"environment variable {name} is not set"):
        interpolate(f"${{{name}}}", {})


@given(texts)
def test_interpolate_never_crashes(text):
    """Any text either expands or raises InterpolationError."""
    try:
        assert isinstance(interpolate(text, {"A": "1"}), str)
    except InterpolationError:
        pass


@given(st.integers(0, 10**6))
def test_duration_plain_numbers_are_seconds(n):
    """A bare number, as a number or as text, is seconds."""
    assert parseDuration(n) == n
    assert parseDuration(str(n)) == n


@given(st.integers(0, 1000), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_duration_units_add_up(h, m, s, ms):
    """Units combine: 1h30m15s500ms is the sum of its parts."""
    assert parseDuration(f"{h}h{m}m{s}s{ms}ms") == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)
    assert parseDuration(f"{m}m") == m * 60
    assert parseDuration(f"{h}d") == h * 86400


@given(st.text(alphabet=string.ascii_letters + string.digits + " .-:", max_size=12))
def test_duration_rejects_or_parses(text):
    """Any text is either a non-negative duration or a DurationError."""
    try:
        assert parseDuration(text) >= 0
    except DurationError:
        pass


@pytest.mark.parametrize("value", [True, False, -1, "-5s", "", "15 minutes", "m", None, [1]])
def test_duration_rejects(value):
    """Booleans, negatives, empty and unknown units are not durations."""
    with pytest.raises(DurationError):
        parseDuration(value)


def test_broken_files_do_not_depend_on_the_process_environment():
    """The table's environment variables are not set in the test process."""
    assert "OAUTHMAIL_TEST_UNSET" not in os.environ


_FUZZ_TEXTS = [p.read_text() for p in sorted(CONFIGS.glob("**/*.yaml"))] + [
    (ROOT / "conf" / "app.yaml").read_text()
]
_FUZZ_VALUES = [
    "",
    "~",
    "[]",
    "{}",
    "[1, 2]",
    "{a: 1}",
    "0",
    "-1",
    "1.5",
    "yes",
    "'x'",
    "!!binary aGVsbG8=",
    "2024-01-01",
    "${X}",
    "${Y:-3}",
    "pop3",
    '"\\x00"',
    "http://192.0.2.1/",
    "99999999999999999999",
    ".nan",
    "!!set {a}",
    "*nope",
]


@given(
    st.sampled_from(_FUZZ_TEXTS),
    st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from(_FUZZ_VALUES), st.booleans()),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_configs_fail_only_with_config_error(text, edits):
    """Any damaged configuration loads or fails with a one-line ConfigError, nothing else."""
    lines = text.splitlines()
    for index, value, delete in edits:
        if not lines:
            break
        index %= len(lines)
        if delete:
            del lines[index]
        elif ":" in lines[index]:
            lines[index] = lines[index][: lines[index].index(":") + 1] + " " + value
    try:
        parseConfig("\n".join(lines), "f.yaml", {"X": "1"})
    except ConfigError as e:
        assert "\n" not in str(e)
        assert str(e).startswith("f.yaml:")


@given(st.text(max_size=80))
def test_any_text_fails_only_with_config_error(text):
    """Arbitrary text is a configuration or a one-line ConfigError."""
    try:
        parseConfig(text, "f.yaml", {})
    except ConfigError as e:
        assert "\n" not in str(e)


def test_accounts_share_their_profile_object(full):
    """Accounts without overrides share the profile object; an override makes a new one."""
    config = parseConfig(
        "profiles:\n  g: {provider: google, client_id: x, client_secret: s}\n"
        "accounts:\n"
        "  - {name: a, address: a@example.com, profile: g, imap: {}, smtp: {}}\n"
        "  - {name: b, address: b@example.com, profile: g, imap: {folders: [X]}}\n",
        "x.yaml",
        {},
    )
    assert config.account("a").profile is config.profiles["g"]
    assert config.account("b").profile is config.profiles["g"]
    assert full.account("py").profile is not full.profiles["local"]


def test_queue_bounce_defaults_off_and_parses():
    """``queue.bounce`` is off unless set, and takes a boolean."""
    assert parseConfig("queue: {max_age: 1d}\n", "x.yaml", {}).queue.bounce is False
    assert parseConfig("queue: {bounce: true}\n", "x.yaml", {}).queue.bounce is True
    with pytest.raises(ConfigError, match="queue.bounce"):
        parseConfig("queue: {bounce: sometimes}\n", "x.yaml", {})


def test_sent_folder_defaults_follow_the_provider():
    """Google and Microsoft look in Sent by default (they file what they accept); generic not."""
    text = (
        "profiles:\n"
        "  g: {provider: google, client_id: x, client_secret: s}\n"
        "  m: {provider: microsoft, client_id: x, client_secret: s, tenant: t.example}\n"
        "  p: {provider: generic, client_id: x, token_endpoint: 'https://t.example/token',\n"
        "      authorization_endpoint: 'https://t.example/auth', scopes: [mail],\n"
        "      imap: {host: imap.example.com}, smtp: {host: smtp.example.com}}\n"
        "accounts:\n"
        "  - {name: g, address: g@example.com, profile: g, smtp: {}}\n"
        "  - {name: m, address: m@example.com, profile: m, smtp: {}}\n"
        "  - {name: p, address: p@example.com, profile: p, smtp: {}}\n"
        "  - {name: named, address: n@example.com, profile: p, smtp: {sent_folder: Sent Items}}\n"
        "  - {name: off, address: o@example.com, profile: g, smtp: {sent_folder: NONE}}\n"
        "  - {name: app, address: a@example.com, profile: m, grant: client_credentials,\n"
        "     smtp: {}}\n"
        "queue: {sent_check_delay: 0s, sent_check_give_up: 2h}\n"
    )
    config = parseConfig(text, "x.yaml", {})
    folders = {a.name: a.smtp.sent_folder for a in config.accounts}
    assert folders == {
        "g": "auto",
        "m": "auto",
        "p": "none",
        "named": "Sent Items",
        "off": "none",
        "app": "none",  # app-only tokens are often allowed to send but not to read
    }
    assert (config.queue.sent_check_delay, config.queue.sent_check_give_up) == (0.0, 7200.0)


# --- the providers as they are (issue 16) ---------------------------------------


def profileOf(text: str, name: str, environ: dict[str, str] | None = None) -> ProfileConfig:
    """Profile ``name`` of a configuration given as YAML text."""
    return parseConfig(text, "x.yaml", environ or {}).profiles[name]


def test_client_auth_defaults_from_provider_and_secret():
    """Google clients send their secret; others are public unless a secret is given."""
    text = (
        "profiles:\n"
        "  g: {provider: google, client_id: x, client_secret: s}\n"
        "  m: {provider: microsoft, client_id: x, client_secret: s}\n"
        "  pub: {provider: microsoft, client_id: x, client_secret: '${MS_SECRET:-}'}\n"
        "  gen: {provider: generic, client_id: x, token_endpoint: 'https://t.example/token',\n"
        "        scopes: [mail]}\n"
    )
    config = parseConfig(text, "x.yaml", {})
    auth = {name: (p.client_auth, p.sendsSecret) for name, p in config.profiles.items()}
    assert auth == {
        "g": ("secret", True),
        "m": ("secret", True),
        "pub": ("none", False),
        "gen": ("none", False),
    }
    explicit = profileOf(
        "profiles:\n  m: {provider: microsoft, client_id: x, client_auth: none}\n", "m"
    )
    assert (explicit.client_auth, explicit.sendsSecret, explicit.configured) == (
        "none",
        False,
        True,
    )


def test_profile_config_built_in_code_keeps_its_meaning():
    """A ProfileConfig made in code without client_auth follows its secret, as before."""
    common = dict(
        name="p", kind="generic", authorization_endpoint=None, token_endpoint="https://t/",
        device_endpoint=None, revocation_endpoint=None, introspection_endpoint=None,
        client_id="id", scopes=("mail",),
    )  # fmt: skip
    assert ProfileConfig(client_secret=None, **common).client_auth == "none"
    confidential = ProfileConfig(client_secret=Secret("s"), **common)
    assert confidential.client_auth == "secret" and confidential.sendsSecret
    assert confidential.configured and confidential.missingSetting is None
    with pytest.raises(ValueError):
        ProfileConfig(client_secret=None, client_auth="maybe", **common)


def test_google_secret_left_empty_by_the_environment_is_not_configured():
    """A Google client_secret that expands empty leaves the account not configured, not broken."""
    text = (
        "profiles:\n"
        "  g: {provider: google, client_id: '${GID:-}', client_secret: '${GSECRET:-}'}\n"
        "accounts:\n  - {name: a, address: a@example.com, profile: g}\n"
    )
    account = parseConfig(text, "x.yaml", {"GID": "id"}).account("a")
    assert not account.configured
    assert account.profile.missingSetting == "client_secret"
    account = parseConfig(text, "x.yaml", {"GID": "id", "GSECRET": "s"}).account("a")
    assert account.configured and account.profile.sendsSecret


def test_google_auth_code_profile_without_secret_is_refused():
    """Google needs the secret at code exchange: a profile that has none is an error."""
    text = (
        "profiles:\n  g: {provider: google, client_id: id}\n"
        "accounts:\n  - {name: a, address: a@example.com, profile: g}\n"
    )
    with pytest.raises(ConfigError, match=r"x.yaml:2: profiles.g: Google requires the client"):
        parseConfig(text, "x.yaml", {})
    # not configured yet (no client id): it loads, the operator fills both in
    assert not parseConfig(text.replace("id}", "''}"), "x.yaml", {}).account("a").configured


def test_microsoft_device_code_on_a_confidential_profile_is_refused():
    """Finding 1: a device-code account cannot share a profile that sends a secret."""
    text = (
        "profiles:\n"
        "  m: {provider: microsoft, client_id: id, client_secret: '${MS_CLIENT_SECRET:-}'}\n"
        "accounts:\n  - {name: r, address: r@example.com, profile: m, grant: device_code}\n"
    )
    assert parseConfig(text, "x.yaml", {}).account("r").profile.client_auth == "none"
    with pytest.raises(ConfigError) as info:
        parseConfig(text, "x.yaml", {"MS_CLIENT_SECRET": SECRET_MARKER})
    message = str(info.value)
    assert message.startswith("x.yaml:4: accounts[0].grant: Microsoft's device flow is for public")
    assert "use a separate profile without client_secret" in message
    assert SECRET_MARKER not in message


def test_device_grant_rule_is_one_function_for_every_entry_point():
    """deviceGrantProblem says why a profile cannot use the device grant, in the loader's words."""
    text = (
        "profiles:\n"
        "  g: {provider: google, client_id: x, client_secret: s}\n"
        "  ms: {provider: microsoft, client_id: x, client_secret: s}\n"
        "  mp: {provider: microsoft, client_id: x}\n"
        "  gen: {provider: generic, client_id: x, token_endpoint: 'https://t.example/token',\n"
        "        scopes: [mail]}\n"
    )
    profiles = parseConfig(text, "x.yaml", {}).profiles
    assert "Google's device flow does not grant the Gmail scope" in deviceGrantProblem(
        profiles["g"]
    )
    assert "(AADSTS700025)" in deviceGrantProblem(profiles["ms"])
    assert deviceGrantProblem(profiles["mp"]) is None and allowsDeviceGrant(profiles["mp"])
    assert (
        deviceGrantProblem(profiles["gen"])
        == "grant device_code needs profiles.gen.device_endpoint"
    )
    assert not allowsDeviceGrant(profiles["g"])
    assert providers.deviceGrantProblem is deviceGrantProblem


def test_microsoft_redirect_uri_defaults_to_localhost():
    """Microsoft profiles redirect to http://localhost:{web.port}/callback (not 127.0.0.1)."""
    m = profileOf("profiles:\n  m: {provider: microsoft, client_id: x}\n", "m")
    assert m.redirect_uri == "http://localhost:8025/callback"
    text = "profiles:\n  m: {provider: microsoft, client_id: x}\nweb: {port: 8026}\n"
    assert profileOf(text, "m").redirect_uri == "http://localhost:8026/callback"
    # port 0: the console's port is known only once it listens
    text = "profiles:\n  m: {provider: microsoft, client_id: x}\nweb: {port: 0}\n"
    anyPort = profileOf(text, "m")
    assert anyPort.redirect_uri is None
    assert anyPort.redirectURIFor(40123) == "http://localhost:40123/callback"
    own = "profiles:\n  m: {provider: microsoft, client_id: x,\n    redirect_uri: 'https://mail.example.com/cb'}\n"
    assert profileOf(own, "m").redirectURIFor(8025) == "https://mail.example.com/cb"
    g = profileOf("profiles:\n  g: {provider: google, client_id: x, client_secret: s}\n", "g")
    assert g.redirect_uri is None and g.redirectURIFor(8025) is None  # the console's own


def test_google_client_type_and_port_zero():
    """Google clients are desktop unless web; port 0 is fine for desktop, refused for web."""
    base = "profiles:\n  g: {provider: google, client_id: x, client_secret: s%s}\nweb: {port: 0}\n"
    assert profileOf(base % "", "g").client_type == "desktop"
    with pytest.raises(ConfigError, match=r"x.yaml:3: web.port: profiles.g is a Google Web client"):
        parseConfig(base % ", client_type: web", "x.yaml", {})
    fixed = base.replace("port: 0", "port: 8025") % ", client_type: web"
    assert profileOf(fixed, "g").client_type == "web"
    assert (
        profileOf("profiles:\n  m: {provider: microsoft, client_id: x}\n", "m").client_type is None
    )


def test_outlook_com_preset_and_note():
    """Outlook.com sends through smtp-mail.outlook.com and is told that IMAP starts off."""
    text = (
        "profiles:\n  o: {provider: microsoft, tenant: consumers, client_id: x}\n"
        "accounts:\n  - {name: a, address: a@outlook.com, profile: o, imap: {}, smtp: {}}\n"
    )
    config = parseConfig(text, "x.yaml", {})
    outlook = config.profiles["o"]
    assert outlook.smtp == ServerConfig("smtp-mail.outlook.com", 587, "starttls")
    assert outlook.imap == ServerConfig("outlook.office365.com", 993, "implicit")
    assert config.notes == (
        "x.yaml:4: accounts[0].imap: Outlook.com turns IMAP off until the mailbox owner turns on"
        " 'Let devices and apps use IMAP' (Outlook.com Settings, Mail, Forwarding and IMAP)",
    )
    work = profileOf(
        "profiles:\n  m: {provider: microsoft, tenant: contoso.com, client_id: x}\n", "m"
    )
    assert work.smtp.host == "smtp.office365.com"
    assert providers.preset("microsoft", "organizations").smtp.host == "smtp.office365.com"


def test_microsoft_redirect_on_an_address_is_noted():
    """An http redirect URI on an address needs a manifest edit at Microsoft: a note says so."""
    text = (
        "profiles:\n  m: {provider: microsoft, client_id: x,\n"
        "    redirect_uri: 'http://127.0.0.1:8025/callback'}\n"
    )
    config = parseConfig(text, "x.yaml", {})
    assert len(config.notes) == 1
    assert config.notes[0].startswith("x.yaml:3: profiles.m.redirect_uri: Microsoft's app")
    assert parseConfig(text.replace("127.0.0.1", "localhost"), "x.yaml", {}).notes == ()


def test_shipped_example_passes_with_the_secrets_set():
    """conf/app.yaml loads with MS_CLIENT_SECRET and GOOGLE_CLIENT_ID set (issue 16)."""
    environ = {"MS_CLIENT_SECRET": "ms-s", "GOOGLE_CLIENT_ID": "g-id", "MS_CLIENT_ID": "m-id"}
    config = loadConfig(str(ROOT / "conf" / "app.yaml"), environ=environ)
    reports = config.account("reports")
    assert reports.grant == "device_code" and reports.profile.client_auth == "none"
    assert config.profiles["microsoft"].sendsSecret
    assert config.profiles["microsoft"].redirect_uri == "http://localhost:8025/callback"
    helpdesk = config.account("helpdesk")
    assert helpdesk.profile.missingSetting == "client_secret"  # GOOGLE_CLIENT_SECRET unset
    for account in config.accounts:
        if account.grant == "device_code":
            assert allowsDeviceGrant(account.profile)


def test_userinfo_endpoint_from_the_profile_or_the_google_preset():
    """userinfo_endpoint is read like the other endpoints; Google's preset has one."""
    text = (
        "profiles:\n"
        "  g: {provider: google, client_id: x, client_secret: s}\n"
        "  own: {provider: google, client_id: x, client_secret: s,\n"
        "        userinfo_endpoint: 'https://id.example.com/userinfo'}\n"
        "  p: {provider: generic, client_id: x, token_endpoint: 'https://t.example/token',\n"
        "      userinfo_endpoint: 'https://t.example/userinfo', scopes: [mail]}\n"
        "  q: {provider: generic, client_id: x, token_endpoint: 'https://t.example/token',\n"
        "      scopes: [mail]}\n"
    )
    from oauthmail.config.presets import GOOGLE_USERINFO

    profiles = parseConfig(text, "x.yaml", {}).profiles
    assert profiles["g"].userinfo_endpoint == GOOGLE_USERINFO
    assert profiles["own"].userinfo_endpoint == "https://id.example.com/userinfo"
    assert profiles["p"].userinfo_endpoint == "https://t.example/userinfo"
    assert profiles["q"].userinfo_endpoint is None


def test_cluster_section_defaults_and_values():
    """cluster: the host name and 10 s / 30 s / 5 min by default; durations as given."""
    import socket

    base = "profiles: {g: {provider: google, client_id: abc}}\naccounts: []\n"
    plain = parseConfig(base, "c.yaml", {})
    assert plain.cluster.node == (socket.gethostname() or "oauthmail")
    assert (plain.cluster.lease_renew, plain.cluster.lease_expiry) == (10.0, 30.0)
    assert plain.cluster.claim_expiry == 300.0
    given = parseConfig(
        base + "cluster: {node: n2, lease_renew: 1s, lease_expiry: 3s, claim_expiry: 5s}\n",
        "c.yaml",
        {},
    )
    assert (given.cluster.node, given.cluster.lease_renew, given.cluster.lease_expiry) == (
        "n2",
        1.0,
        3.0,
    )
    assert given.cluster.claim_expiry == 5.0


def test_a_file_without_end_is_refused_in_one_line():
    """/dev/zero as the configuration was read for ever; past 8 MiB it is refused."""
    with pytest.raises(ConfigError) as info:
        loadConfig("/dev/zero")
    assert str(info.value) == "/dev/zero: larger than 8 MiB: not a configuration file"
