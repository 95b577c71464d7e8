"""A blocking client of the gateway RPC for the command line (`gatewayctl rpc METHOD key=value ...`).

It speaks the same JSON-RPC 2.0 over HTTP as `gateway.rpc` serves, with the
standard library only (http.client over AF_UNIX or TCP), because the CLI runs
without a reactor. What it prints is masked like everything else an operator
sees by default.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import uuid
from typing import Any, TextIO
from urllib.parse import urlsplit

from gateway.masking import mask_record, mask_text
from gateway.rpc_api import CODE_NAMES, INTERNAL_ERROR, RpcError, text_params

MAX_REPLY = 64 << 20
USAGE = "gatewayctl rpc [--socket PATH | --url URL --token-file FILE] [--timeout S] METHOD key=value ..."
EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE = 0, 1, 2, 64


class RpcUnavailable(Exception):
    """No usable answer: the gateway could not be reached, or answered something that is not JSON-RPC."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _connection(unix_path: str | None, url: str | None, timeout: float) -> tuple[http.client.HTTPConnection, str, str]:
    if (unix_path is None) == (url is None):
        raise ValueError("give exactly one of unix_path and url")
    if unix_path is not None:
        return _UnixHTTPConnection(unix_path, timeout), "/rpc", f"unix:{unix_path}"
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"url {url}: must be http://HOST:PORT/rpc")
    return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout), parts.path or "/rpc", url


def call(method: str, params: dict | None = None, *, unix_path: str | None = None, url: str | None = None,
         token: str | None = None, timeout: float = 60.0) -> Any:
    """Call *method* with *params* and return its result.

    Raises RpcError (with code, message, field) when the gateway refuses,
    RpcUnavailable when there is no usable answer, ValueError for bad arguments.
    """
    conn, path, where = _connection(unix_path, url, timeout)
    request_id = uuid.uuid4().hex
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params or {}, "id": request_id},
                      ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        status = response.status
        data = response.read(MAX_REPLY + 1)
    except (OSError, http.client.HTTPException) as e:
        raise RpcUnavailable(f"cannot reach the gateway RPC at {where}: {e}") from e
    finally:
        conn.close()
    if len(data) > MAX_REPLY:
        raise RpcUnavailable(f"{where} answered more than {MAX_REPLY} bytes")
    try:
        doc = json.loads(data)
    except ValueError:
        raise RpcUnavailable(f"{where} answered HTTP {status} with a body that is not JSON") from None
    if not isinstance(doc, dict):
        raise RpcUnavailable(f"{where} answered HTTP {status} with JSON that is not a JSON-RPC response")
    error = doc.get("error")
    if isinstance(error, dict):
        data_ = error.get("data") if isinstance(error.get("data"), dict) else {}
        raise RpcError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")),
                       data_.get("field"), {k: v for k, v in data_.items() if k != "field"} or None)
    if status != 200 or doc.get("id") != request_id or "result" not in doc:
        raise RpcUnavailable(f"{where} answered HTTP {status} without a result for this request")
    return doc["result"]


def _json_value(text: str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(name)
    try:
        return json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError):
        return text


# Parameters that are text even when they look like numbers: an all-digit
# account or order number read as JSON would become an int (and a leading "+"
# or exponent would change it). A JSON string literal is still unquoted.
# The string-typed parameters of the method table (gateway.rpc_api.METHODS).
TEXT_PARAMS = text_params()


def parse_cli_params(args: list[str]) -> dict:
    """["order_no=O1", "seqs=[1,2]", "seq=5"] -> {"order_no": "O1", "seqs": [1, 2], "seq": 5}.

    A value that parses as JSON is that JSON value, anything else a string;
    except that the TEXT_PARAMS are always strings. A key given twice is an
    error rather than a guess at which one was meant.
    """
    params: dict = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{arg!r}: parameters are key=value")
        if key in params:
            raise ValueError(f"{key}: given twice")
        parsed = _json_value(value)
        params[key] = parsed if key not in TEXT_PARAMS or isinstance(parsed, str) else value
    return params


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"token file {path}: {getattr(e, 'strerror', None) or e}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # the CLI's exit codes are ours, not argparse's 2
        raise ValueError(message)


def rpc_cli_main(args: list[str], *, unix_path: str | None = None, url: str | None = None,
                 token_file: str | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """`gatewayctl rpc [--socket PATH | --url URL --token-file FILE] METHOD key=value ...`.

    The keyword arguments are the defaults the caller (gatewayctl, from the
    configuration) supplies; options in *args* override them. Prints the result
    as JSON on stdout and returns 0; a refusal goes to stderr as code, name,
    field and message with exit 1; no usable answer is exit 2; bad arguments 64.
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = _Parser(prog="gatewayctl rpc", add_help=False)
    parser.add_argument("--socket", default=None)
    parser.add_argument("--url", default=None)
    parser.add_argument("--token-file", default=token_file)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("method")
    parser.add_argument("params", nargs="*")
    try:
        opts = parser.parse_args(args)
        params = parse_cli_params(opts.params)
    except ValueError as e:
        print(f"gatewayctl rpc: {e}", file=err)
        print(f"usage: {USAGE}", file=err)
        return EXIT_USAGE
    # An option given on the command line replaces both configured endpoints.
    if opts.socket is not None or opts.url is not None:
        unix_path, url = opts.socket, opts.url
    elif unix_path is not None and url is not None:
        url = None
    token = None
    try:
        if url is not None and opts.token_file:
            token = _read_token(opts.token_file)
        result = call(opts.method, params, unix_path=unix_path, url=url, token=token, timeout=opts.timeout)
    except RpcError as e:
        name = CODE_NAMES.get(e.code, "ERROR")
        field = f" field={e.field}" if e.field else ""
        print(f"refused: {name} ({e.code}){field}: {mask_text(e.message)}", file=err)
        if e.data:
            print(json.dumps(mask_record(e.data), ensure_ascii=False, indent=2), file=err)
        return EXIT_REFUSED
    except ValueError as e:
        print(f"gatewayctl rpc: {e}", file=err)
        return EXIT_USAGE
    except RpcUnavailable as e:
        print(str(e), file=err)
        return EXIT_UNREACHABLE
    shown = mask_record(result) if isinstance(result, dict) else result
    print(json.dumps(shown, ensure_ascii=False, indent=2), file=out)
    return EXIT_OK
