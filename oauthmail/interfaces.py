"""The seams of oauthmail.

Every component that another one depends on is described here, so that tests
(and users embedding oauthmail) can put their own implementation in its place
and ``verifyObject`` can prove that the real ones keep their promises.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ITokenStore(Interface):
    """Durable, encrypted storage of accounts and their OAuth tokens.

    Every method returns a Deferred and never blocks the reactor thread.
    Secret values (access and refresh tokens) go in and come out as
    :class:`oauthmail.secret.Secret` and are encrypted at rest.
    """

    def open():
        """Create or migrate the schema and check the encryption key.

        Fails with ``oauthmail.db.errors.WrongKeyError`` when the database
        was written with another key; nothing is changed in that case.
        """

    def close():
        """Release the connection pool."""

    def ensureAccount(account_id, provider):
        """Make sure an account row exists (state ``unauthorised`` if new).

        Fires with its :class:`oauthmail.tokens.records.AccountRecord`.
        """

    def getAccount(account_id):
        """Fire with the ``AccountRecord`` or ``None``."""

    def listAccounts():
        """Fire with a list of every ``AccountRecord``, sorted by id."""

    def setAccountState(account_id, state, last_error=None):
        """Record an account's state (one of ``ACCOUNT_STATES``) and last error."""

    def getTokens(account_id):
        """Fire with the account's ``TokenRecord`` or ``None``."""

    def getAccountWithTokens(account_id):
        """Fire with ``(AccountRecord or None, TokenRecord or None)``, read together.

        What a refresh needs, in one read instead of ``getAccount`` + ``getTokens``.
        """

    def listExpiries():
        """Fire with a ``TokenExpiry`` for every account, sorted by id, decrypting nothing.

        ``oauthmail.tokens.records.TokenExpiry``: ``(account, state, has_tokens,
        expires_at, has_refresh, updated_at)``. The refresher plans a pass from
        this one listing rather than reading (and decrypting) every account.
        """

    def putTokens(account_id, tokens, expected_version):
        """Store a ``TokenSet`` if the stored version is ``expected_version``.

        ``expected_version`` is 0 when no tokens are stored yet. Fires with the
        new ``TokenRecord`` (version incremented) only once the write is durable,
        or fails with ``VersionConflict`` and changes nothing. A store may commit
        several concurrent calls together; each call's compare-and-swap still
        succeeds or fails on its own.
        """

    def deleteTokens(account_id):
        """Forget an account's tokens (on revocation by a person only)."""

    def recordSentProof(account_id, kept, folder):
        """Record what ``oauthmail test --send-to-self`` found (replacing an earlier finding).

        ``kept``: whether the provider's Sent copy kept the trace line;
        ``folder``: the mailbox looked in. Stamped with the store's clock; fires
        with the ``oauthmail.tokens.records.SentProof``. ``StoreError`` for an
        unknown account.
        """

    def getSentProof(account_id):
        """Fire with the account's ``SentProof``, or ``None`` when it was never checked."""

    def refreshLocked(account_id, fresh_enough, refresh, read=None):
        """Refresh the account's tokens at most once among every node sharing this store.

        Holds the account's refresh lock (PostgreSQL: its tokens row, ``SELECT
        … FOR UPDATE`` in one transaction; a store used by one process needs
        none) while it:

        1. reads the stored ``TokenRecord`` (``None`` when there is none)
           AFTER getting the lock;
        2. if ``fresh_enough(record)`` is true, fires with
           ``LockedRefresh(record, refreshed=False)``: another node refreshed
           meanwhile, use that, ask the provider nothing;
        3. else calls ``refresh(record)``, which asks the provider ONCE and
           returns (a Deferred firing with) a ``TokenSet``; stores it
           compare-and-swap on ``record``'s version (as ``putTokens``) in the
           same transaction; fires with ``LockedRefresh(new record,
           refreshed=True)`` once it is durable.

        ``fresh_enough`` and ``refresh`` run on the reactor thread. ``refresh``
        must not write this account's tokens itself (it would wait for the
        lock it runs under) and should not retry with backoff while the lock
        is held: a store bounds how long it holds the lock.

        A failing ``refresh`` writes nothing, releases the lock and fails the
        call with its error. Fails with ``oauthmail.db.errors.RefreshBusy``
        when the lock could not be had in time (nothing asked, nothing
        changed), ``StoreError`` for an unknown account (before any
        ``refresh``), and ``VersionConflict``/``StoreError``/``StoreUnwritable``
        when the write failed after ``refresh`` answered: the caller still
        has the ``TokenSet`` its ``refresh`` returned and keeps it as it does
        after a failed ``putTokens``.

        ``read`` is the ``TokenRecord`` the caller just read and found due, if
        any. A store that needs no lock may take it for steps 1 and 2 (one
        process: its single flight and the compare-and-swap make that read
        and judgement as good as under a lock); a shared store ignores it.
        """


class ITokenSource(Interface):
    """The only thing that hands out access tokens."""

    def accessToken(account_id):
        """Fire with a valid access token (``Secret``), refreshing first if needed."""

    def forceRefresh(account_id):
        """Refresh now (a server rejected the token) and fire with the new one."""


class IHTTPTransport(Interface):
    """Sends one form-encoded or plain HTTP request and returns the answer."""

    def request(method, url, headers, body):
        """Fire with an ``HTTPResponse`` (status, headers, body bytes)."""


class ISink(Interface):
    """Where a received message goes.

    ``deliver`` must fire only once the message is durably taken (for a
    Maildir: written, synced and renamed into ``new/``), because the IMAP
    watcher marks, moves or deletes the message on the server right after.

    ``beforeCommit`` (a watcher under a lease; ``None`` for one node alone)
    raises when the folder's lease is gone. The sink calls it once, after
    writing and right before anything becomes visible (a Maildir: before the
    renames into ``new/``), or before handing anything on if it has no such
    step. When it raises, the sink makes nothing visible, removes what it
    wrote, and fails with that exception: a node paused mid-delivery cannot
    finish it after another node took the folder over.
    """

    name = Attribute("A short name used in logs and on the console.")

    def deliver(message, account, folder, beforeCommit=None):
        """Take ``message`` (bytes, exact as on the server).

        Fails with ``TemporarySinkError`` (leave the message on the server, retry
        later), ``PermanentSinkError`` (record it, move on), or what ``beforeCommit`` raised.
        """


class IBatchSink(ISink):
    """A sink that takes many messages at once and pays for durability once per batch."""

    def deliverBatch(messages, beforeCommit=None, digests=None):
        """Take ``[(message, account, folder)]``; fire with one result per message, in order.

        A result is the message's final place (taken durably) or the ``SinkError``
        it met; one failure does not fail the others. The Deferred fails only with
        what ``beforeCommit`` (once per batch) raised. ``digests``, if given, are
        the messages' ``messageDigest`` (the watcher has them): no second hash.
        """


class IClosable(Interface):
    """Something that holds resources (connections, threads) until it is closed."""

    def close():
        """Release them; fire once done."""


class IRecoverableSink(ISink):
    """A sink that can tell, after a crash, which messages it already holds.

    The watcher records "handed to the sink" before delivering a batch. If
    the process dies before the outcome is recorded, the next run asks the
    sink about those messages instead of delivering them a second time.
    Sinks without this (command, webhook) are at-least-once across a crash.
    """

    def findDelivered(digests):
        """Fire with the subset of ``digests`` (see ``oauthmail.digest``) it holds."""


class IDeliveryLedger(Interface):
    """Durable bookkeeping for exactly-once IMAP delivery; every method returns a Deferred.

    **Fences.** Every write takes an optional ``fence``
    (:class:`oauthmail.cluster.records.Fence`: the folder's lease holder and
    epoch, see :class:`oauthmail.cluster.interfaces.ILeaseStore`). With one,
    the write is made only if that lease is still held by that node under that
    epoch and has not expired, checked in the write's own transaction; otherwise
    it fails with ``oauthmail.db.errors.StaleLease`` and changes nothing, so a
    node that was paused and lost the folder to another cannot record or dispose
    anything after waking. ``None`` writes unconditionally (one node alone:
    SQLite, tools). A fence for another account or folder is a ``ValueError``.
    """

    def folderState(account, folder):
        """Fire with ``(uidvalidity, last_delivered_uid)`` or ``None`` if never seen."""

    def setFolderState(account, folder, uidvalidity, last_delivered_uid, fence=None):
        """Remember the folder's UIDVALIDITY and the highest UID dealt with."""

    def recordDeliveries(
        account, folder, uidvalidity, entries, last_delivered_uid=None, disposed=False, fence=None
    ):
        """Record ``[(uid, digest, state)]`` in ONE transaction (state delivered|failed_permanent).

        ``last_delivered_uid``, when given, is stored as the folder's lower
        bound ("every UID up to here is recorded") in the same transaction; the
        caller gives it only when no message below it waits for a retry.
        ``disposed`` records delivered messages as already disposed (the
        ``keep`` disposition has nothing to do on the server). One transaction
        per batch keeps the ledger's fsyncs off the delivery path.
        """

    def deliveredUIDs(account, folder, uidvalidity, uids):
        """Fire with the subset of ``uids`` whose outcome is recorded (not ``handed``)."""

    def markDisposed(account, folder, uidvalidity, uids, fence=None):
        """The disposition of these delivered UIDs was applied on the server."""

    def recordHanded(account, folder, uidvalidity, entries, fence=None):
        """Record ``[(uid, digest)]`` as handed to the sink, outcome unknown (one transaction).

        A handed row does not count as delivered: the message is fetched again
        next round, and the watcher asks an ``IRecoverableSink`` whether it
        already holds it. ``recordDeliveries`` replaces the row with the outcome.
        """

    def knownAndHanded(account, digests):
        """Fire with ``(known, handed)``, two subsets of the sha256 ``digests``, in ONE read.

        ``known``: delivered for the account (in any folder; byte-identical mail
        is delivered once). ``handed``: of the others, those handed to the sink
        with the outcome unknown. A batch asks both before it is delivered, and
        each read is a round trip to the database (over the network, for a cluster).
        """

    def pendingDisposition(account, folder, uidvalidity):
        """Fire with the sorted UIDs delivered but not yet disposed on the server."""

    def apply(write, fence):
        """Store one ``oauthmail.db.ledgerstore.LedgerWrite`` (each write above makes one)."""


class ISubmissionQueue(Interface):
    """The durable outbound queue, as the submission server and ``send()`` see it."""

    def enqueue(account_name, mail_from, recipients, message):
        """Store a message for sending through ``account_name``.

        ``mail_from`` is the envelope sender (``str``), ``recipients`` a list
        of envelope recipient addresses (``str``), ``message`` the message
        bytes with CRLF line ends. Fire with a message id (``str``) only once
        the message is durably stored; fail for a temporary problem (the
        client is told ``451`` and retries) or with an ``SMTPServerError`` to
        give the client that exact answer.
        """


class ISentFolder(Interface):
    """Where a provider files the mail it accepted (Gmail, Microsoft 365: the Sent folder).

    SMTP cannot say whether a message whose final dot went out without an
    answer (a crash, a lost connection) was taken: resending may deliver it
    twice. The outbound queue asks this seam first, and sends again only what
    it does not find.
    """

    def findSent(account_name, probes):
        """Fire with the set of ``queue_id`` values among ``probes`` that have a copy in Sent.

        ``probes`` is a sequence of :class:`oauthmail.mail.trace.SentProbe`. A
        copy counts only if it has the probe's Message-ID *and* carries its
        queue id in the ``Received:`` line oauthmail added: a copy that the
        user's mail program stored in Sent itself proves nothing. Fail with
        :class:`oauthmail.mail.trace.SentCheckError` (one line, no token) when
        the folder could not be searched; the caller waits and asks again.
        """


class IAccountHealth(Interface):
    """The one owner of account state: parts report, the account is the worst of them.

    See :mod:`oauthmail.health`. Tokens, each watched IMAP folder and SMTP
    report their own condition; nothing else writes an account's state.
    """

    def report(account, part, state, error=None, advice=None, until=None):
        """Record ``part``'s condition (``ok``, ``retrying``, ``error``, ...) for ``account``.

        Fires once the account's resulting state is stored; never fails.
        """

    def view(account):
        """The account's derived health (an :class:`oauthmail.health.AccountView`)."""

    def condition(account, part):
        """``part``'s last reported :class:`oauthmail.health.Condition`, or ``None``."""

    def listen(listener):
        """Call ``listener(account, before, after)`` when an account's derived state changes."""


class IDeliveryPolicy(Interface):
    """The queue's rules that an outbox applies inside its own transactions.

    Called in the database's thread: implementations are pure (no Twisted, no
    I/O) and answer at once.
    """

    max_age = Attribute("Seconds after its creation when a message still not sent fails.")
    bounce = Attribute("True when a failure for good queues a bounce (see ``bounceFor``).")
    sent_check = Attribute("The account names whose provider files accepted mail in Sent.")
    sent_check_delay = Attribute("Seconds to let the provider file its copy before searching.")

    def nextAttempt(attempts, created_at, now):
        """The time of the next attempt after ``attempts`` (backoff), or ``None`` past max_age."""

    def bounceFor(account, data, mail_from, failures, now):
        """The bounce to queue for a message that failed for good, or ``None``.

        ``failures`` is ``[(recipient, code, text)]``. Returns an
        :class:`oauthmail.smtp.queue.records.OutboxEntry` from ``<>`` to
        ``mail_from`` (``None`` for a message that is itself a bounce). May
        raise: the outbox then keeps the failure and notes that no bounce went.
        """


class IOutbox(Interface):
    """The outbound queue's durable storage: messages, recipients, attempts, doubts.

    Every method returns a Deferred. Values are those of
    :mod:`oauthmail.smtp.queue.records`. An outbox applies the queue's
    :class:`IDeliveryPolicy` inside its transactions, so that a recorded
    failure and its bounce, or an outcome and its next attempt, are one write.

    SQLite serves one node: ``claimDue`` marks messages ``sending``;
    ``recover`` at start returns them. The PostgreSQL outbox is shared by
    several nodes: it claims with ``FOR UPDATE SKIP LOCKED``, a node name, a
    claim number and a claim expiry (the database's clock); its ``recover``
    returns this node's claims and the expired claims of any node, and
    :meth:`tendClaims` (every node, every few seconds) renews this node's
    claims and takes back any node's expired ones. Its writes of a claimed
    message's outcome (``recordRefusals``, ``recordOutcomes``,
    ``recordFailure``) are fenced by the claim: a node whose claim expired and
    was taken back records nothing over the next claimant's (the outcome is
    dropped, and said so in the log). The rest of the contract stays as it is.
    """

    def enqueue(message):
        """Store a ``OutboxEntry`` (all recipients ``pending``, due now).

        Fires only once the message is durable (a synced commit): the
        submission server answers ``250`` after this.
        """

    def recover(now, policy):
        """Put messages left ``sending`` by a crash back in the queue; fire with ``Recovery``.

        Those of accounts in ``policy.sent_check`` are in doubt (looked for in
        Sent after ``policy.sent_check_delay``), the others are due now. Every
        message already in doubt gets a new ``in_doubt_since`` of ``now``.
        """

    def tendClaims(now, policy):
        """Renew this node's claims; take back any node's expired claims; fire with ``Recovery``.

        What is taken back goes as in :meth:`recover` (looked for in Sent
        first, or due now), without touching other messages in doubt. An
        outbox used by one process has no claim to tend (``Recovery(0, 0)``).
        """

    def dueAccounts(now):
        """Fire with the names of the accounts that have a message due at ``now``."""

    def nextDue(account):
        """Fire with the earliest next attempt of the account's queued messages, or ``None``."""

    def claimDue(account, now, limit):
        """Claim at most ``limit`` due messages not in doubt, oldest due first.

        They are ``sending`` (claimed for one session) when this fires with
        ``[OutboxMessage]``, each with the recipients still to send to. One
        write for the whole claim; it need not be synced (a claim lost in a
        power failure is only a message queued again).
        """

    def dueInDoubt(account, now, limit):
        """Fire with up to ``limit`` due messages in doubt, as ``[DoubtfulMessage]``."""

    def takeInDoubt(account, now, limit, hold):
        """Up to ``limit`` due ``[DoubtfulMessage]``, held ``hold`` s; others' rows skipped."""

    def clearDoubt(ids, now, last_error=None):
        """No longer in doubt: due at ``now`` (this and the two below skip settled ones)."""

    def stillInDoubt(ids, reason, now, wait, give_up):
        """Sent could not be searched: look again after ``wait`` seconds.

        In doubt ``give_up`` s or more: sent again (at least once beats at most once)."""

    def settleDoubt(found, missing, now, policy):
        """Record what Sent showed: ``found`` ids are sent, ``missing`` ids are sent again.

        For a found message the recipients of the attempt in doubt are
        ``sent``; those refused for now are tried again. Fire with the
        ``DeliveryStatus`` of each found message.
        """

    def recordRefusals(message_id, refused):
        """Record recipients refused at ``RCPT`` (``[RecipientReply]``) before the content goes.

        Synced: a lost record would let a copy in Sent count for them.
        """

    def recordOutcomes(outcomes, now, policy):
        """Record several ``AttemptOutcome`` in ONE write (group commit; need not be synced).

        A recipient with ``OK`` is ``sent`` and never sent to again; with
        ``PERMANENT`` ``failed``; else retried (``policy.nextAttempt``), and an
        outcome ``in_doubt`` of a ``policy.sent_check`` account puts the message
        in doubt. A message with no recipient left is final (its bounce queued
        in the same write). Fire with the ``DeliveryStatus`` of each message
        that changed.
        """

    def recordFailure(ids, reason, now, policy):
        """A session failed before these messages got an answer: retry or give up.

        Fire with their ``DeliveryStatus``.
        """

    def makeDue(account, now, delay):
        """Make every queued message of the account due now; fire with how many are due now.

        A message in doubt stays not due before ``in_doubt_since + delay``.
        """

    def status(message_id):
        """Fire with the message's ``DeliveryStatus``, or ``None`` for an unknown id."""

    def listStatuses(account):
        """Fire with every message of the account as ``DeliveryStatus``, oldest first."""

    def messageData(message_id):
        """Fire with the stored bytes of the message (with its trace line), or ``None``."""

    def stats():
        """Fire with ``[AccountFigures]``, one per account that has messages, sorted."""

    def listMessages(account=None, states=("queued", "sending", "failed"), limit=1000):
        """Fire with up to ``limit`` ``DeliveryStatus`` (of ``account``, or all) in ``states``,
        oldest first: what ``oauthmail queue`` lists."""

    def retryMessage(message_id, now, delay):
        """An operator's retry (one synced write); fire with the new ``DeliveryStatus`` or ``None``.

        ``queued``: due at ``now`` (in doubt: not before ``in_doubt_since + delay``).
        ``failed``: queued again, due now, failed recipients pending, attempts and
        age starting over; ``sent`` recipients never again. Others: left as they are.
        """

    def deleteMessage(message_id):
        """Remove it in any state (one synced write); fire with its last ``DeliveryStatus``.

        ``None`` for an unknown id. A later outcome for it changes nothing.
        """

    def purgeFinished(before, limit):
        """Delete up to ``limit`` ``sent``/``failed`` messages queued before ``before``; a count."""


class IMessageSender(Interface):
    """How the queue hands claimed messages to a provider (SMTP today; API transports later)."""

    def send(account, token, messages, hooks):
        """Send ``messages`` (``[OutboxMessage]``) through ``account``, one session.

        Fire with an :class:`oauthmail.smtp.client.SessionResult` (``outcomes``
        and ``error``); fail only when cancelled. ``hooks`` is a
        :class:`~oauthmail.smtp.queue.records.SessionHooks`: ``beforeData`` is
        called before each message's content goes out and may return a
        Deferred to wait for, ``onOutcome`` gets every outcome as it comes, and
        ``more()`` fires with more messages for the same session (an empty list
        ends it).
        """


class IIMAPSession(Interface):
    """One authenticated-or-not IMAP connection, as the watcher and the Sent check use it.

    Every method returns a Deferred. A session that ends (``BYE``, a protocol
    violation, a lost connection, a missed deadline) fails every pending and
    later call with the reason, which :meth:`whenLost` also gives.
    ``oauthmail.imap.session.IMAPSession`` is the implementation.
    """

    capabilities = Attribute(
        "Upper-case capability atoms (frozenset of bytes, e.g. b'IDLE'), or None if unknown."
    )
    existsSeen = Attribute("How many untagged EXISTS responses this connection has seen.")
    byeText = Attribute("The text of the server's BYE, or None.")
    lastAlert = Attribute("The text of the last [ALERT] response code, or None.")
    commandTimeout = Attribute("Seconds a command may go without an answer (0: no deadline).")
    onUntagged = Attribute("None, or a callable given an IdleEvent for EXISTS/EXPUNGE.")

    def whenLost():
        """Fire, once the connection is gone, with the exception that says why."""

    def close():
        """Close the connection politely."""

    def abort():
        """Drop the connection at once."""

    def capability():
        """Ask CAPABILITY again; fire with the capability atoms."""

    def authenticate(mechanism, user, token, host=None, port=None, providerKind="generic"):
        """OAuth AUTHENTICATE (XOAUTH2/OAUTHBEARER); fire with the capabilities asked again.

        Fails with ``oauthmail.imap.errors.IMAPAuthenticationError`` (with
        ``token_rejected``/``temporary``), ``CleartextAuthenticationRefused``
        or ``MechanismNotOffered``.
        """

    def selectFolder(name):
        """SELECT; fire with a ``SelectInfo`` (uidvalidity, exists, uidnext)."""

    def examineFolder(name):
        """EXAMINE (read-only SELECT); fire with a ``SelectInfo``."""

    def uidSearchFrom(first):
        """Fire with the sorted UIDs >= ``first`` in the selected folder."""

    def uidSearchHeader(field, value):
        """Fire with the sorted UIDs whose header ``field`` contains ``value``."""

    def uidSearchGmailRaw(query):
        """Fire with the sorted UIDs Gmail's ``X-GM-RAW`` search finds (needs X-GM-EXT-1)."""

    def fetchSizes(uids):
        """Fire with ``{uid: RFC822.SIZE}`` for the UIDs the server still has."""

    def fetchMessages(uids):
        """Fire with ``[(uid, exact bytes)]``; UIDs answered without a body are absent."""

    def fetchHeaders(uids):
        """Fire with ``[(uid, header section bytes)]``."""

    def uidStore(uids, flags, add=True):
        """Add (or remove) ``flags`` on the UIDs, silently."""

    def uidCopy(uids, mailbox):
        """Copy the UIDs to ``mailbox``."""

    def uidMove(uids, mailbox):
        """Move the UIDs to ``mailbox`` (RFC 6851)."""

    def uidExpunge(uids):
        """Expunge only these UIDs (RFC 4315)."""

    def expunge():
        """Expunge every ``\\Deleted`` message of the selected folder."""

    def createMailbox(mailbox):
        """Create ``mailbox``; an existing one is not an error."""

    def listMailboxes():
        """Fire with ``[(attributes, name)]`` of every mailbox."""

    def idle(onEvent):
        """Start IDLE; fire with an ``IdleSession`` (``whenEnded()``, ``done()``, ``ended``)."""

    def noop():
        """NOOP."""

    def logout():
        """LOGOUT, then close."""
