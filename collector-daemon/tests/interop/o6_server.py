#!/usr/bin/env python3
"""open62541 OPC UA peer for the collector's interop test.

Like asyncua_server.py, this runs a server from an implementation other than
the Rust stack the collector uses: open62541 (C), through its Python wrapper
`o6` (pip install o6; the free build stops the process after ten minutes,
which is plenty for a test).

    python3 o6_server.py --port PORT --pki DIR [--user NAME --password-file FILE]

What it serves:
  * endpoint opc.tcp://127.0.0.1:PORT, SecurityPolicy None / mode None, with
    open62541's OWN anonymous user token policy.  open62541 rewrites every
    policy id per endpoint as "<id>-<mode>#<policy>", so the None endpoint
    advertises "open62541-anonymous-policy-none#None", and ActivateSession
    with any other policy id (e.g. asyncua's or a Rust client's default
    "anonymous") fails with BadIdentityTokenInvalid.  The ids actually
    advertised are read back with a GetEndpoints and reported.
    The server echoes the host of the GetEndpoints request URL in
    EndpointUrl, so a client asking at 127.0.0.1 sees 127.0.0.1.
  * with --user: the server additionally loads a self-signed certificate,
    generated once into DIR (server_key.pem, server_cert.der; application URI
    urn:o6-interop:server as first SAN URI entry, DNS localhost, IP 127.0.0.1)
    and accepts any client certificate.  open62541 then offers every RSA
    policy it has (Basic256Sha256, Aes128_Sha256_RsaOaep,
    Aes256_Sha256_RsaPss, each with Sign and SignAndEncrypt; o6 cannot
    restrict the list).  Username/password sessions are accepted for exactly
    NAME and the password in FILE, and only on a SignAndEncrypt channel;
    anonymous sessions stay allowed on every endpoint.  o6 can only add a
    username policy through its Python AccessControl plugin, which replaces
    open62541's default plugin; to keep the advertised anonymous id the same
    as in the plain mode, the plugin declares the default plugin's base ids
    ("open62541-anonymous-policy", "open62541-username-policy").
    Without --user no certificate is loaded and only None/None is offered.
  * namespace urn:o6-interop:plant with variables under Objects, string node
    ids: Temperature (Double), Counter (UInt32), Running (Boolean),
    Name (String), Stamp (DateTime), Levels (Float[3]) and Broken, whose
    value is null with status BadSensorFailure (0x808C0000).

The listening socket is bound to 127.0.0.1 only: o6 opens it through the
asyncio loop, so the script narrows that loop's create_server host.

Once listening it prints one JSON line on stdout (endpoint, namespace index,
node ids, advertised anonymous policy ids, secure flag, certificate path,
versions), then runs until SIGTERM/SIGINT and exits 0.  The o6 banner, which
the native module writes to stdout at import, is sent to stderr.
"""

import argparse
import asyncio
import datetime
import hmac
import json
import logging
import os
import signal
import sys
from pathlib import Path

# o6 prints a banner to file descriptor 1 when imported; keep the real stdout
# for the JSON line and point descriptor 1 at stderr for everything else.
_READY_OUT = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

import numpy as np  # noqa: E402  (o6 depends on numpy)
import o6  # noqa: E402
from o6.ns import ns0  # noqa: E402

import fixture_cert  # noqa: E402  (next to this script)

APP_URI = "urn:o6-interop:server"
NAMESPACE_URI = "urn:o6-interop:plant"
NAMESPACE_SHORTNAME = "o6interop_plant"  # o6's process-wide name for it
HOST = "127.0.0.1"
BAD_SENSOR_FAILURE = 0x808C0000  # BadSensorFailure, 2156658688
# name -> (initial value, explicit DataType or None to infer)
VARIABLES = {
    "Temperature": (21.5, ns0.datatypes.Double),
    "Counter": (np.uint32(3_000_000_000), ns0.datatypes.UInt32),
    "Running": (True, ns0.datatypes.Boolean),
    "Name": ("line-1", ns0.datatypes.String),
    "Stamp": (
        o6.DateTime(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)),
        ns0.datatypes.DateTime,
    ),
    "Levels": (np.array([1.5, 2.25, -3.0], dtype=np.float32), ns0.datatypes.Float),
}
BROKEN = "Broken"


class AnonymousOrOneUser(o6.AccessControl):
    """Anonymous on any endpoint; exactly one username/password, encrypted only.

    Declares the base policy ids of open62541's default AccessControl plugin,
    so the advertised ids ("open62541-anonymous-policy-none#None", ...) are
    the same as the plain open62541 server's.
    """

    def __init__(self, user: str, password: str):
        super().__init__(anonymous=False, username=False)
        policy, kind = ns0.datatypes.UserTokenPolicy, ns0.datatypes.UserTokenType
        self.user_token_policies = [
            policy(policyId="open62541-anonymous-policy", tokenType=kind.ANONYMOUS),
            policy(policyId="open62541-username-policy", tokenType=kind.USER_NAME),
        ]
        self.user, self.password = user.encode(), password.encode()

    def activateSession(self, endpoint, remoteCertificate, session, userIdentityToken):
        token = userIdentityToken
        if isinstance(token, ns0.datatypes.AnonymousIdentityToken):
            return None
        if isinstance(token, ns0.datatypes.UserNameIdentityToken):
            encrypted = int(endpoint.securityMode) == int(o6.SecurityMode.SIGN_AND_ENCRYPT)
            ok = hmac.compare_digest((token.userName or "").encode(), self.user)
            ok &= hmac.compare_digest(bytes(token.password or b""), self.password)
            if encrypted and ok:
                return None
            raise o6.StatusCodeError(o6.StatusCode.BAD_USER_ACCESS_DENIED)
        raise o6.StatusCodeError(o6.StatusCode.BAD_IDENTITY_TOKEN_REJECTED)


def bind_loopback_only(loop: asyncio.AbstractEventLoop) -> None:
    """o6 listens via loop.create_server(factory, "0.0.0.0", port); narrow it."""
    create_server = loop.create_server

    async def loopback_create_server(factory, host=None, port=None, *args, **kwargs):
        return await create_server(factory, HOST, port, *args, **kwargs)

    loop.create_server = loopback_create_server


async def advertised_endpoints(url: str) -> list:
    """GetEndpoints against ourselves with o6's client."""
    # Quiet logger: the client warns about every username policy it filters.
    quiet = logging.getLogger("o6.interop.getendpoints")
    quiet.setLevel(logging.ERROR)
    client = o6.Client(url, logger=quiet)
    await client.connect(noSession=True)
    try:
        return await client.getEndpoints(url)
    finally:
        await client.disconnect()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pki", type=Path, required=True)
    parser.add_argument("--user")
    parser.add_argument("--password-file", type=Path)
    args = parser.parse_args()
    if (args.user is None) != (args.password_file is None):
        parser.error("--user and --password-file go together")

    loop = asyncio.get_running_loop()
    bind_loopback_only(loop)
    options = {"applicationUri": APP_URI}
    cert_path = None
    if args.user is not None:
        password = args.password_file.read_text().rstrip("\r\n")
        key_path, cert_path = fixture_cert.ensure_certificate(args.pki.absolute(), APP_URI, "o6 interop server")
        options.update(
            certificate=cert_path,
            privateKey=key_path,
            acceptAllCertificates=True,
            accessControl=AnonymousOrOneUser(args.user, password),
        )
    server = o6.Server(port=args.port, loop=loop, logger=logging.getLogger("o6.server"), **options)

    o6.ns.namespace(NAMESPACE_SHORTNAME, uri=NAMESPACE_URI)
    server.ns.append(sys.modules[__name__])
    idx = server._get_namespace_index(NAMESPACE_URI)  # index in the server's NamespaceArray
    plant_ns = getattr(o6.ns, NAMESPACE_SHORTNAME).index  # o6's process-wide index
    nodes = {}
    for name, (value, data_type) in VARIABLES.items():
        await server.addVariable(
            name,
            server.objectsNode,
            value,
            nodeId=o6.NodeId(f"ns={NAMESPACE_SHORTNAME};s={name}"),
            dataType=data_type,
            ns=plant_ns,
        )
        nodes[name] = f"ns={idx};s={name}"
    broken = await server.addVariable(
        BROKEN,
        server.objectsNode,
        None,
        nodeId=o6.NodeId(f"ns={NAMESPACE_SHORTNAME};s={BROKEN}"),
        dataType=ns0.datatypes.Double,
        writable=False,
        ns=plant_ns,
    )
    nodes[BROKEN] = f"ns={idx};s={BROKEN}"
    # Bad status with a null value: a storage write of (null, Bad) into a
    # Double variable fails with BadTypeMismatch, so Broken is callback-backed
    # (an open62541 data source); the 1-tuple means "this status, no value".
    bad = o6.StatusCode(BAD_SENSOR_FAILURE)
    server.implement(broken, read=lambda node, **_: (bad,))

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    endpoint = f"opc.tcp://{HOST}:{args.port}"
    async with server:  # start() binds the port; stop() on exit
        endpoints = await advertised_endpoints(endpoint)
        anonymous_ids = []
        for ep in endpoints:
            for token in ep.userIdentityTokens:
                if token.tokenType == ns0.datatypes.UserTokenType.ANONYMOUS and token.policyId not in anonymous_ids:
                    anonymous_ids.append(token.policyId)
        build_info = await server.read(["i=2264", "i=2265"])  # SoftwareVersion, BuildNumber
        ready = {
            "endpoint": endpoint,
            "namespace_uri": NAMESPACE_URI,
            "namespace_index": idx,
            "nodes": nodes,
            "bad_status": {"name": "BadSensorFailure", "code": BAD_SENSOR_FAILURE},
            "anonymous_policy_ids": anonymous_ids,
            "secure": cert_path is not None,
            "stack": "open62541 via o6",
            "version": {"o6": o6.__version__, "open62541": build_info[0], "open62541_build": build_info[1]},
        }
        advertised = sorted({ep.endpointUrl for ep in endpoints})
        if advertised != [endpoint]:
            ready["advertised_endpoint"] = advertised[0] if len(advertised) == 1 else advertised
        if cert_path is not None:
            ready["cert_der"] = str(cert_path)
        print(json.dumps(ready), file=_READY_OUT, flush=True)
        await stop.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main())
