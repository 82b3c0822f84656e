"""The session state machine, replayed as scripts of events in and commands out (no network)."""

import hashlib
import hmac
import base64

import pytest

from proxy import codec
from proxy.scram import ScramError, Verifier, tls_server_end_point
from proxy.session.scram_bridge import ScramBridge
from proxy.session.events import ClientClosed, ClientData, ClientTLSEstablished, ServerClosed, ServerData, UpstreamConnected
from proxy.session import (Close, OpenUpstream, ForwardCancel, LookupVerifier, Phase, SendToClient,
                           SendToServer, Session, SessionConfig, StartClientTLS)

STARTUP = codec.StartupMessage(codec.PROTOCOL_3_0, (("user", "app"), ("database", "crm"), ("odd_param", "x")))
PLAIN_STARTUP = codec.StartupMessage(codec.PROTOCOL_3_0, STARTUP.params[:2])  # what a restricted tier may send
AUTH_OK = codec.encode(codec.Authentication(0, b""))
KEY = codec.encode(codec.BackendKeyData(4242, b"\x01\x02\x03\x04"))
READY = codec.encode(codec.ReadyForQuery(b"I"))


def sent_to_client(commands) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, SendToClient))


def sent_to_server(commands) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, SendToServer))


def active_session(config=None) -> Session:
    s = Session(config)
    # a restricted tier may send only the settings on its allow list (odd_param is not)
    startup = STARTUP if config is None or config.engine is None else PLAIN_STARTUP
    assert s.handle(ClientData(codec.encode_startup(startup))) == [OpenUpstream(startup)]
    commands = s.handle(UpstreamConnected(False))
    assert sent_to_server(commands) == codec.encode_startup(startup)  # every parameter verbatim
    out = s.handle(ServerData(AUTH_OK + KEY + READY))
    assert sent_to_client(out) == AUTH_OK + KEY + READY  # the server's key, unchanged
    assert s.phase is Phase.ACTIVE
    return s


def test_startup_ssl_refused_then_startup():
    s = Session()
    assert s.handle(ClientData(codec.encode_startup(codec.SSLRequest()))) == [SendToClient(b"N")]
    assert s.handle(ClientData(codec.encode_startup(codec.GSSENCRequest()))) == [SendToClient(b"N")]
    assert s.handle(ClientData(codec.encode_startup(STARTUP))) == [OpenUpstream(STARTUP)]
    assert s.user == "app" and s.database == "crm"


def test_startup_ssl_accepted_when_certificate():
    s = Session(SessionConfig(tls_available=True))
    assert s.handle(ClientData(codec.encode_startup(codec.SSLRequest()))) == [SendToClient(b"S"), StartClientTLS()]
    assert s.phase is Phase.TLS_HANDSHAKE
    s.handle(ClientTLSEstablished())
    out = s.handle(ClientData(codec.encode_startup(codec.SSLRequest())))
    assert isinstance(out[-1], Close)  # a second SSLRequest inside TLS is a violation


def test_startup_packet_in_pieces():
    s = Session()
    wire = codec.encode_startup(STARTUP)
    for i in range(len(wire) - 1):
        assert s.handle(ClientData(wire[i:i + 1])) == []
    assert s.handle(ClientData(wire[-1:])) == [OpenUpstream(STARTUP)]


def test_cancel_request_forwarded_with_the_servers_key():
    s = Session()
    request = codec.CancelRequest(4242, b"k" * 32)  # protocol 3.2 key length
    commands = s.handle(ClientData(codec.encode_startup(request)))
    assert commands[0] == ForwardCancel(request, client_waits=True)
    assert isinstance(commands[1], Close)


def test_auth_relay_and_wrong_password():
    s = Session()
    s.handle(ClientData(codec.encode_startup(STARTUP)))
    s.handle(UpstreamConnected(False))
    md5 = codec.encode(codec.Authentication(5, b"salt"))
    assert sent_to_client(s.handle(ServerData(md5))) == md5
    answer = codec.encode(codec.PasswordMessage("md5abc"))
    assert sent_to_server(s.handle(ClientData(answer))) == answer
    error = codec.error_response("28P01", 'password authentication failed for user "app"', severity="FATAL")
    assert sent_to_client(s.handle(ServerData(error))) == error  # the server's own text


def test_relay_is_byte_exact_and_tracks_transactions():
    s = active_session()
    query = codec.encode(codec.Query("BEGIN; SELECT 1"))
    assert s.handle(ClientData(query)) == [SendToServer(query)]
    assert s.outstanding == 1
    reply = (codec.encode(codec.CommandComplete("BEGIN")) + codec.encode(codec.DataRow((b"1",)))
             + codec.encode(codec.ReadyForQuery(b"T")))
    assert s.handle(ServerData(reply)) == [SendToClient(reply)]
    assert s.transaction_status == b"T" and s.outstanding == 0


def test_extended_protocol_flush_gets_no_ready():
    s = active_session()
    msgs = (codec.encode(codec.Parse("", "SELECT $1", (23,))) + codec.encode(codec.Describe(b"S", ""))
            + codec.encode(codec.Flush()))
    assert s.handle(ClientData(msgs)) == [SendToServer(msgs)]
    assert s.outstanding == 0  # Flush asks for no ReadyForQuery
    s.handle(ClientData(codec.encode(codec.Sync())))
    assert s.outstanding == 1


def test_wrong_state_messages_are_fatal_08p01():
    s = active_session()
    out = s.handle(ClientData(codec.encode(codec.AuthResponse(b"x"))))
    error = codec.decode_message(codec.BACKEND, sent_to_client(out))
    assert error.get(b"C") == "08P01" and error.get(b"S") == "FATAL"
    assert isinstance(out[-1], Close) and s.phase is Phase.CLOSED
    assert s.handle(ClientData(b"more")) == []  # nothing after close


def test_client_gone_mid_query_cancels_upstream():
    s = active_session()
    s.handle(ClientData(codec.encode(codec.Query("SELECT pg_sleep(30)"))))
    commands = s.handle(ClientClosed())
    assert commands[0] == ForwardCancel(codec.CancelRequest(4242, b"\x01\x02\x03\x04"))
    assert isinstance(commands[-1], Close)


def test_client_gone_while_idle_sends_terminate():
    s = active_session()
    commands = s.handle(ClientClosed())
    assert not any(isinstance(c, ForwardCancel) for c in commands)
    assert sent_to_server(commands) == codec.encode(codec.Terminate())


def test_server_gone_between_messages_is_08006():
    s = active_session()
    out = s.handle(ServerClosed())
    assert codec.decode_message(codec.BACKEND, sent_to_client(out)).get(b"C") == "08006"


def test_server_gone_mid_row_closes_without_injecting():
    s = active_session()
    row = codec.encode(codec.DataRow((b"x" * 1000,)))
    s.handle(ServerData(row[:100]))
    out = s.handle(ServerClosed())
    assert sent_to_client(out) == b"" and isinstance(out[-1], Close)


def test_server_fatal_is_not_doubled():
    s = active_session()
    fatal = codec.error_response("57P01", "terminating connection due to administrator command", severity="FATAL")
    s.handle(ServerData(fatal))
    assert sent_to_client(s.handle(ServerClosed())) == b""


def test_parameter_status_is_tracked():
    s = active_session()
    s.handle(ServerData(codec.encode(codec.ParameterStatus("search_path", "crm, public"))))
    assert s.server_params["search_path"] == "crm, public"


# ----------------------------------------------------------------------------- SCRAM bridge
def scram_client_first(nonce="cnonce", flag="n,,"):
    return f"{flag}n=,r={nonce}".encode()


def client_proof(password, salt, iterations, auth_message):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored, auth_message, hashlib.sha256).digest()
    return bytes(a ^ b for a, b in zip(client_key, signature))


def run_bridge(password_given, password_stored="secret", cb=None):
    verifier = Verifier.from_password(password_stored, b"saltsaltsaltsalt")
    text = (f"SCRAM-SHA-256$4096:{base64.b64encode(verifier.salt).decode()}$"
            f"{base64.b64encode(verifier.stored_key).decode()}:{base64.b64encode(verifier.server_key).decode()}")
    bridge = ScramBridge("app", client_tls=cb is not None, client_cert_hash=cb, server_cert_hash=b"S" * 32,
                         nonce=lambda: "pgveilnonce")
    offer = codec.decode_message(codec.BACKEND, bridge.start()[0].data)
    assert offer.mechanisms() == (("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256") if cb else ("SCRAM-SHA-256",))
    flag = "p=tls-server-end-point,," if cb else "n,,"
    mechanism = "SCRAM-SHA-256-PLUS" if cb else "SCRAM-SHA-256"
    first = codec.SASLInitialResponse(mechanism, scram_client_first(flag=flag)).body()
    assert bridge.client_message(first) == [LookupVerifier("app")]
    server_first = codec.decode_message(codec.BACKEND, bridge.verifier_found(text)[0].data).data.decode()
    assert server_first.startswith("r=cnoncepgveilnonce,")
    cbind = base64.b64encode(flag.encode() + (cb or b"")).decode()
    without_proof = f"c={cbind},r=cnoncepgveilnonce"
    auth_message = f"n=,r=cnonce,{server_first},{without_proof}".encode()
    proof = base64.b64encode(client_proof(password_given, verifier.salt, 4096, auth_message)).decode()
    return bridge, bridge.client_message(f"{without_proof},p={proof}".encode())


def test_scram_bridge_verifies_client_and_authenticates_upstream():
    bridge, steps = run_bridge("secret", cb=b"C" * 32)
    (command,) = steps
    assert isinstance(command, SendToServer)
    payload = command.data
    initial = codec.decode_message(codec.FRONTEND, payload)
    upstream = codec.decode_as(codec.SASLInitialResponse, initial.data)
    assert upstream.mechanism == "SCRAM-SHA-256-PLUS"
    assert upstream.data.startswith(b"p=tls-server-end-point,,n=,r=pgveilnonce")


def test_scram_bridge_rejects_wrong_password():
    with pytest.raises(ScramError) as info:
        run_bridge("not the secret")
    assert info.value.sqlstate == "28P01"


def test_scram_bridge_detects_downgrade():
    bridge = ScramBridge("app", client_tls=True, client_cert_hash=b"C" * 32, server_cert_hash=None)
    bridge.start()
    with pytest.raises(ScramError, match="channel binding negotiation"):
        bridge.client_message(codec.SASLInitialResponse("SCRAM-SHA-256", scram_client_first(flag="y,,")).body())


def test_tls_server_end_point_uses_sha256_by_default():
    der = b"\x30\x82" + b"\x00" * 100
    assert tls_server_end_point(der) == hashlib.sha256(der).digest()


def test_session_hides_plus_when_both_legs_cannot_bridge():
    s = Session(SessionConfig(scram_bridge_possible=False))
    s.handle(ClientData(codec.encode_startup(STARTUP)))
    s.handle(UpstreamConnected(True, server_cert_hash=b"x" * 32))
    offer = codec.encode(codec.Authentication.sasl(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")))
    relayed = codec.decode_message(codec.BACKEND, sent_to_client(s.handle(ServerData(offer))))
    assert relayed.mechanisms() == ("SCRAM-SHA-256",)


def test_session_bridge_asks_for_verifier():
    s = Session(SessionConfig(scram_bridge_possible=True, tls_available=True, client_cert_hash=b"c" * 32))
    s.handle(ClientData(codec.encode_startup(codec.SSLRequest())))
    s.handle(ClientTLSEstablished())
    s.handle(ClientData(codec.encode_startup(STARTUP)))
    s.handle(UpstreamConnected(True, server_cert_hash=b"x" * 32))
    offer = codec.encode(codec.Authentication.sasl(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")))
    relayed = codec.decode_message(codec.BACKEND, sent_to_client(s.handle(ServerData(offer))))
    assert relayed.mechanisms() == ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")
    first = codec.encode(codec.SASLInitialResponse("SCRAM-SHA-256-PLUS",
                                                   scram_client_first(flag="p=tls-server-end-point,,")))
    assert s.handle(ClientData(first)) == [LookupVerifier("app")]


# ----------------------------------------------------------------------------- policy on the wire
class BrokenFirstLayer:
    """An engine whose rewrite lets everything through, as a bug in the first layer would."""

    def __init__(self, tier):
        from types import SimpleNamespace
        self.tier = tier
        self.catalog = None
        self.rules = SimpleNamespace(version="v1", grants=())

    def tier_for(self, user, address=None, now=None):
        return self.tier

    def identity(self, user, address=None, now=None):
        return self.tier, ()

    def resolve(self, user, address, now, purpose):
        from proxy.access import Access, Resolved
        return Resolved(Access("v1", self.tier.name, (), purpose), self.tier, (), None)

    def decide(self, sql, tier, search_path, user, access=None):
        from proxy.policy import Decision
        return Decision("allow", sql)

    def hidden_columns(self, tier):
        return frozenset({(16384, 4)})


def restricted_session():
    from proxy.rules import ClassAction, Tier
    tier = Tier("sales", {"id_number": ClassAction("mask")}, frozenset({"read"}))
    s = Session(SessionConfig(engine=BrokenFirstLayer(tier)))
    s.handle(ClientData(codec.encode_startup(PLAIN_STARTUP)))
    s.handle(UpstreamConnected(False))
    s.handle(ServerData(AUTH_OK + KEY + READY))
    return s


def test_restricted_tier_start_up_parameter_outside_the_allow_list_ends_the_connection():
    from proxy.rules import ClassAction, Tier
    tier = Tier("sales", {"id_number": ClassAction("mask")}, frozenset({"read"}))
    s = Session(SessionConfig(engine=BrokenFirstLayer(tier)))
    s.handle(ClientData(codec.encode_startup(STARTUP)))  # odd_param=x
    s.handle(UpstreamConnected(False))
    sent = sent_to_client(s.handle(ServerData(AUTH_OK + KEY + READY)))
    error = codec.decode_message(codec.BACKEND, sent[:1 + int.from_bytes(sent[1:5], "big")])
    assert b"Z" not in sent[-6:-5]  # no ReadyForQuery: the client never gets a session
    assert error.get(b"C") == "28000" and error.get(b"S") == "FATAL"
    assert "changing odd_param is not allowed for tier sales" in error.get(b"M")
    assert s.phase is Phase.CLOSED


def test_second_layer_stops_a_result_naming_a_hidden_column():
    from proxy.session import Alert
    s = restricted_session()
    s.handle(ClientData(codec.encode(codec.Query("SELECT id_number FROM customers"))))
    description = codec.encode(codec.RowDescription((("id_number", 16384, 4, 1042, -1, 22, 0),)))
    rows = codec.encode(codec.DataRow((b"110105194912310021",))) * 3
    tail = codec.encode(codec.CommandComplete("SELECT 3")) + READY
    out = s.handle(ServerData(description + rows[:30]))  # the rows arrive in pieces
    out += s.handle(ServerData(rows[30:] + tail))
    sent = sent_to_client(out)
    assert b"110105194912310021" not in sent
    error = codec.decode_message(codec.BACKEND, sent[:-len(READY)])
    assert error.get(b"C") == "42501" and "pgveil stopped a result" in error.get(b"M")
    assert sent.endswith(READY)  # the session goes on
    assert any(isinstance(c, Alert) for c in out)


def test_second_layer_lets_masked_and_other_columns_through():
    s = restricted_session()
    s.handle(ClientData(codec.encode(codec.Query("SELECT ..."))))
    description = codec.encode(codec.RowDescription((("id_number", 0, 0, 1042, -1, 22, 0),
                                                     ("id", 16384, 1, 23, 4, -1, 0))))
    reply = description + codec.encode(codec.DataRow((b"110***0021", b"1"))) + READY
    assert sent_to_client(s.handle(ServerData(reply))) == reply


def test_notice_reaches_a_restricted_tier():
    """psycopg's BEGIN inside its own transaction: the server's WARNING 25001 is a NoticeResponse,
    relayed (without a detail, as for errors), and the session goes on."""
    s = restricted_session()
    s.handle(ClientData(codec.encode(codec.Query("BEGIN"))))
    fields = ((b"S", "WARNING"), (b"C", "25001"), (b"M", "there is already a transaction in progress"))
    notice = codec.encode(codec.NoticeResponse((*fields, (b"D", "a detail"))))
    rest = codec.encode(codec.CommandComplete("BEGIN")) + codec.encode(codec.ReadyForQuery(b"T"))
    sent = sent_to_client(s.handle(ServerData(notice + rest)))
    assert sent == codec.encode(codec.NoticeResponse(fields)) + rest
    assert codec.decode_message(codec.BACKEND, notice).get(b"C") == "25001"


def test_refusal_is_substituted_and_put_back():
    from proxy.rules import ClassAction, Tier
    from proxy.policy import Decision

    class Refusing(BrokenFirstLayer):
        def decide(self, sql, tier, search_path, user, access=None):
            return Decision("refuse", "", reason="no", sqlstate="42501")

    tier = Tier("sales", {"id_number": ClassAction("mask")}, frozenset({"read"}))
    s = Session(SessionConfig(engine=Refusing(tier)))
    s.handle(ClientData(codec.encode_startup(PLAIN_STARTUP)))
    s.handle(UpstreamConnected(False))
    s.handle(ServerData(AUTH_OK + KEY + READY))
    forwarded = codec.decode_message(codec.FRONTEND, sent_to_server(s.handle(ClientData(codec.encode(codec.Query("x"))))))
    assert "pgveil-refused-" in forwarded.query and "::pg_catalog.int4" in forwarded.query
    token = forwarded.query.split("'")[1]
    server_error = codec.error_response("22P02", f'invalid input syntax for type integer: "{token}"')
    back = codec.decode_message(codec.BACKEND, sent_to_client(s.handle(ServerData(server_error)))[:])
    assert back.get(b"C") == "42501" and back.get(b"M") == "no"


def test_statements_are_read_strictly_in_the_reported_client_encoding():
    from proxy.rules import ClassAction, Tier
    from proxy.policy import Decision
    seen = []

    class Recording(BrokenFirstLayer):
        def decide(self, sql, tier, search_path, user, access=None):
            seen.append(sql)
            return Decision("rewrite", sql.replace("x", "y"))

    tier = Tier("sales", {"id_number": ClassAction("mask")}, frozenset({"read"}))
    s = Session(SessionConfig(engine=Recording(tier)))
    s.handle(ClientData(codec.encode_startup(PLAIN_STARTUP)))
    s.handle(UpstreamConnected(False))
    latin1 = codec.encode(codec.ParameterStatus("client_encoding", "LATIN1"))
    s.handle(ServerData(AUTH_OK + latin1 + KEY + READY))
    query = b"Q" + (len(b"SELECT 'caf\xe9', x") + 5).to_bytes(4, "big") + b"SELECT 'caf\xe9', x\0"
    sent = sent_to_server(s.handle(ClientData(query)))
    assert seen == ["SELECT 'café', x"]
    assert sent.endswith(b"SELECT 'caf\xe9', y\0")  # the rewritten text goes in the client's encoding
    s.handle(ServerData(READY))
    s.handle(ServerData(codec.encode(codec.ParameterStatus("client_encoding", "UTF8"))))
    sent = sent_to_server(s.handle(ClientData(query)))  # 0xE9 alone is not UTF-8
    assert b"pgveil-refused-" in sent and len(seen) == 1
    s.handle(ServerData(codec.encode(codec.ParameterStatus("client_encoding", "SJIS"))))
    sent = sent_to_server(s.handle(ClientData(codec.encode(codec.Query("SELECT 1")))))
    assert b"pgveil-refused-" in sent and len(seen) == 1
