"""A client metadata document server over https on 127.0.0.1, for tests/oauth_cimd.rs.

Usage: cimd_server.py CERT KEY REDIRECT_URI HITS_FILE. Prints its port on the first line of
stdout, then serves until killed; HITS_FILE always holds how many times each path was asked
(JSON). Paths (each document names itself by the URL it was asked for, as a real
client's would, unless the path says otherwise):

  /client.json     a good document, Cache-Control: max-age=600
  /nocache.json    a good document, Cache-Control: no-store
  /wrong-id.json   a document whose client_id is another URL
  /redirect.json   302 to /client.json
  /big.json        a good document padded past 64 KiB
  /slow.json       a good document after 8 seconds
  /trickle.json    headers at once, then the body one byte every half second
"""

import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HITS: dict[str, int] = {}
LOCK = threading.Lock()


def main() -> None:
    cert, key, redirect_uri, hits_file = sys.argv[1:5]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            path = self.path.split("?")[0]
            with LOCK:
                HITS[path] = HITS.get(path, 0) + 1
                with open(hits_file + ".tmp", "w") as out:
                    json.dump(HITS, out)
                os.replace(hits_file + ".tmp", hits_file)
            host = self.headers.get("Host", "")
            own_url = f"https://{host}{path}"
            doc = {
                "client_id": own_url,
                "client_name": "tokenwarden python sdk test",
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
            }
            json_type = {"Content-Type": "application/json"}
            if path == "/client.json":
                self.send(200, json.dumps(doc).encode(), {**json_type, "Cache-Control": "max-age=600"})
            elif path == "/nocache.json":
                self.send(200, json.dumps(doc).encode(), {**json_type, "Cache-Control": "no-store"})
            elif path == "/wrong-id.json":
                doc["client_id"] = f"https://{host}/client.json"
                self.send(200, json.dumps(doc).encode(), json_type)
            elif path == "/redirect.json":
                self.send(302, b"", {"Location": f"https://{host}/client.json"})
            elif path == "/big.json":
                doc["padding"] = "x" * (70 * 1024)
                self.send(200, json.dumps(doc).encode(), json_type)
            elif path == "/slow.json":
                time.sleep(8)
                self.send(200, json.dumps(doc).encode(), json_type)
            elif path == "/trickle.json":
                body = json.dumps(doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for byte in body:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.5)
                except OSError:
                    pass
            else:
                self.send(404, b"{}", json_type)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
