#!/usr/bin/env python3
"""Tiny CQL native-protocol (v4) readiness probe, so the scripts need no cqlsh.

Usage: cql_probe.py HOST PORT [TIMEOUT_SECONDS]

Sends OPTIONS, STARTUP and `SELECT release_version FROM system.local` and prints the server's
version. Exit 0 when the server answered all three, 1 otherwise (the reason goes to stderr).
Only ever connects to the HOST given (cassandra.sh passes 127.0.0.1).
"""
import socket
import struct
import sys

VERSION = 0x04
OP_ERROR, OP_STARTUP, OP_READY, OP_OPTIONS, OP_SUPPORTED, OP_QUERY, OP_RESULT = (
    0x00, 0x01, 0x02, 0x05, 0x06, 0x07, 0x08)


def frame(stream, opcode, body=b""):
    return struct.pack(">BBhBi", VERSION, 0, stream, opcode, len(body)) + body


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by server")
        buf += chunk
    return buf


def request(sock, stream, opcode, body=b""):
    sock.sendall(frame(stream, opcode, body))
    version, _flags, _stream, op, length = struct.unpack(">BBhBi", recv_exact(sock, 9))
    if version & 0x7F != VERSION or not version & 0x80:
        raise ConnectionError("not a CQL v4 response (version byte 0x%02x)" % version)
    payload = recv_exact(sock, length)
    if op == OP_ERROR:
        code = struct.unpack(">i", payload[:4])[0]
        (mlen,) = struct.unpack(">H", payload[4:6])
        raise ConnectionError("server error 0x%04x: %s" % (code, payload[6:6 + mlen].decode("utf-8", "replace")))
    return op, payload


def first_text_cell(payload):
    """Pulls the first cell out of a RESULT/Rows body whose columns are all text."""
    pos = 0
    (kind,) = struct.unpack_from(">i", payload, pos); pos += 4
    if kind != 2:
        return None
    flags, ncols = struct.unpack_from(">ii", payload, pos); pos += 8

    def read_string(p):
        (n,) = struct.unpack_from(">H", payload, p)
        return payload[p + 2:p + 2 + n].decode(), p + 2 + n

    if flags & 0x0002:  # has_more_pages: paging state
        (n,) = struct.unpack_from(">i", payload, pos); pos += 4 + max(n, 0)
    if flags & 0x0004:  # no_metadata
        return None
    if flags & 0x0001:  # global table spec
        _, pos = read_string(pos); _, pos = read_string(pos)
    for _ in range(ncols):
        if not flags & 0x0001:
            _, pos = read_string(pos); _, pos = read_string(pos)
        _, pos = read_string(pos)
        (type_id,) = struct.unpack_from(">H", payload, pos); pos += 2
        if type_id not in (0x000A, 0x000D):  # ascii, varchar: no type parameters
            return None
    (nrows,) = struct.unpack_from(">i", payload, pos); pos += 4
    if nrows < 1:
        return None
    (n,) = struct.unpack_from(">i", payload, pos); pos += 4
    return payload[pos:pos + n].decode() if n >= 0 else None


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, port = sys.argv[1], int(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            op, _ = request(sock, 1, OP_OPTIONS)
            if op != OP_SUPPORTED:
                raise ConnectionError("OPTIONS answered with opcode 0x%02x" % op)
            op, _ = request(sock, 2, OP_STARTUP, struct.pack(">H", 1) + string("CQL_VERSION") + string("3.0.0"))
            if op != OP_READY:
                raise ConnectionError("STARTUP answered with opcode 0x%02x (authentication required?)" % op)
            query = b"SELECT release_version FROM system.local"
            body = struct.pack(">i", len(query)) + query + struct.pack(">HB", 0x0001, 0)
            op, payload = request(sock, 3, OP_QUERY, body)
            if op != OP_RESULT:
                raise ConnectionError("QUERY answered with opcode 0x%02x" % op)
            print(first_text_cell(payload) or "unknown")
            return 0
    except (OSError, ConnectionError, struct.error) as e:
        print("%s:%d: %s" % (host, port, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
