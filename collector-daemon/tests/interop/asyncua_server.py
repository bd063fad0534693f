#!/usr/bin/env python3
"""Independent OPC UA peer for the collector's interop test.

The collector's other tests talk to servers built with the same Rust OPC UA
stack it uses as a client, so a shared misreading of the spec would go
unnoticed.  This script runs a server from a different implementation, the
Python `asyncua` package (pip install asyncua), for a Rust integration test
that launches it as a child process.

    python3 asyncua_server.py --port PORT --pki DIR --user NAME --password-file FILE [--anonymous-none]

What it serves:
  * endpoint opc.tcp://127.0.0.1:PORT/, Basic256Sha256 + SignAndEncrypt
    (discovery, i.e. GetEndpoints, still works over an unsecured channel);
    with --anonymous-none also security None, for anonymous sessions only
    (token policy id `anonymous`);
  * username/password sessions on the secure endpoint: exactly NAME and the
    password in FILE; any client application certificate is accepted;
  * a self-signed server certificate, generated once into DIR (server_key.pem,
    server_cert.der; the test pins the SHA-256 of server_cert.der);
  * namespace urn:asyncua-interop:plant with typed variables under Objects
    (string node ids): Temperature Double 21.5, Counter UInt32 3000000000,
    Running Boolean true, Name String "line-1", Stamp DateTime
    2026-01-02T03:04:05Z, Levels Float[] [1.5, 2.25, -3.0], Broken,
    whose value is BadSensorFailure (no value), and Ramp, an Int32 that
    counts up from 0 every 250 ms (for subscriptions), historized in memory
    (HistoryRead, for backfill).

Once listening it prints one JSON line on stdout (endpoint, namespace index,
certificate path, node ids), then runs until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import datetime
import hmac
import importlib.metadata
import json
import logging
import signal
import sys
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

import fixture_cert  # noqa: E402  (next to this script)

APP_URI = "urn:asyncua-interop:server"
NAMESPACE_URI = "urn:asyncua-interop:plant"
# name -> (initial value, OPC UA type); the same set as the other stacks'
# fixtures (o6_server.py, node_opcua_server.js).
VARIABLES = {
    "Temperature": (21.5, ua.VariantType.Double),
    "Counter": (3000000000, ua.VariantType.UInt32),
    "Running": (True, ua.VariantType.Boolean),
    "Name": ("line-1", ua.VariantType.String),
    "Stamp": (datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), ua.VariantType.DateTime),
    "Levels": ([1.5, 2.25, -3.0], ua.VariantType.Float),
}
BAD_STATUS = ("BadSensorFailure", ua.StatusCodes.BadSensorFailure)
RAMP_PERIOD = 0.25


class OneUser:
    """Accepts exactly one username/password, and only on a secured channel;
    anonymous sessions only on an unsecured one, and only when allowed.

    asyncua falls back to a None channel for any client that asks for one
    (that is how GetEndpoints works) and would then also let that client
    create and activate a session, with the password in clear.  `certificate`
    is the channel's peer (client) certificate, empty (b"") on an unsecured
    channel, so requiring it confines user sessions to the Basic256Sha256
    endpoint.
    """

    def __init__(self, user: str, password: str, anonymous_none: bool):
        self.user, self.password = user, password
        self.anonymous_none = anonymous_none

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None and password is None and not certificate and self.anonymous_none:
            return User(role=UserRole.User)
        if not certificate or username is None or password is None:
            return None  # -> BadUserAccessDenied
        ok = hmac.compare_digest(username.encode(), self.user.encode())
        ok &= hmac.compare_digest(password.encode(), self.password.encode())
        return User(role=UserRole.User) if ok else None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--anonymous-none", action="store_true", help="also serve anonymous sessions over security None")
    args = parser.parse_args()
    password = args.password_file.read_text().rstrip("\r\n")
    key_path, cert_path = fixture_cert.ensure_certificate(args.pki.absolute(), APP_URI, "asyncua interop server")

    endpoint = f"opc.tcp://127.0.0.1:{args.port}/"
    server = Server(user_manager=OneUser(args.user, password, args.anonymous_none))
    await server.init()
    server.set_endpoint(endpoint)
    server.set_server_name("asyncua interop server")
    await server.set_application_uri(APP_URI)
    policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    tokens = [ua.UserNameIdentityToken]  # no X509 user
    if args.anonymous_none:
        policies.append(ua.SecurityPolicyType.NoSecurity)
        tokens.append(ua.AnonymousIdentityToken)
    server.set_security_policy(policies)
    server.set_identity_tokens(tokens)
    await server.load_certificate(str(cert_path))
    await server.load_private_key(str(key_path))
    # No certificate validator is set: asyncua then accepts any client certificate.

    idx = await server.register_namespace(NAMESPACE_URI)
    nodes = {}
    for name, (value, vtype) in VARIABLES.items():
        node_id = ua.NodeId(name, idx)  # string identifier in the plant namespace
        await server.nodes.objects.add_variable(node_id, ua.QualifiedName(name, idx), value, varianttype=vtype)
        nodes[name] = node_id.to_string()
    bad_name, bad_code = BAD_STATUS
    broken = await server.nodes.objects.add_variable(ua.NodeId("Broken", idx), ua.QualifiedName("Broken", idx), 0.0)
    await server.write_attribute_value(
        broken.nodeid,
        ua.DataValue(StatusCode=ua.StatusCode(bad_code), SourceTimestamp=datetime.datetime.now(datetime.timezone.utc)),
    )
    nodes["Broken"] = broken.nodeid.to_string()
    # Ramp: an Int32 that counts up every RAMP_PERIOD seconds, for the
    # subscription interop test (the other variables never change).
    ramp = await server.nodes.objects.add_variable(ua.NodeId("Ramp", idx), ua.QualifiedName("Ramp", idx), 0, varianttype=ua.VariantType.Int32)
    nodes["Ramp"] = ramp.nodeid.to_string()
    # Kept in asyncua's in-memory history (HistoryRead), for the backfill test.
    await server.historize_node_data_change(ramp, period=datetime.timedelta(hours=1))

    async def count_up() -> None:
        n = 0
        while True:
            await asyncio.sleep(RAMP_PERIOD)
            n += 1
            await ramp.write_value(ua.DataValue(ua.Variant(n, ua.VariantType.Int32), SourceTimestamp=datetime.datetime.now(datetime.timezone.utc)))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async with server:  # start() binds the port; stop() on exit
        ready = {
            "endpoint": endpoint,
            "namespace_uri": NAMESPACE_URI,
            "namespace_index": idx,
            "cert_der": str(cert_path),
            "nodes": nodes,
            "bad_status": {"name": bad_name, "code": bad_code},
            "anonymous_policy_ids": ["anonymous"] if args.anonymous_none else [],
            "secure": True,
            "stack": "asyncua",
            "version": importlib.metadata.version("asyncua"),
        }
        print(json.dumps(ready), flush=True)
        counter = asyncio.create_task(count_up())
        await stop.wait()
        counter.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Loading the certificate warns that the machine's hostname is not in its
    # DNS names; clients reach us as 127.0.0.1/localhost, which it does contain.
    logging.getLogger("asyncua.crypto.uacrypto").setLevel(logging.ERROR)
    asyncio.run(main())
