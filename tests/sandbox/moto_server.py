"""moto's server mode, as `python -m moto.server`, with Nagle's algorithm off on its sockets.

Real S3 does not hold a response's body back behind its headers; werkzeug's development server
writes them in separate sends, and with Nagle on every keep-alive request then waits for the
client's delayed ACK (about 40 ms). That stall would be the sandbox's, not the client's, so it is
turned off here. Everything else is moto's own server.
"""

import sys

import werkzeug.serving
from moto.server import main

werkzeug.serving.WSGIRequestHandler.disable_nagle_algorithm = True

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
