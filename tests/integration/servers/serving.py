"""What the helper servers share: the "PORT <n>" line the tests wait for
(helpers.start_server reads it), a threaded TCP accept loop (runner.py,
https_runner.py) and running an asyncio main (ws_echo.py, terminal.py).
Imported from this folder, which is sys.path[0] when a server runs as a script.
"""
import asyncio
import socket
import sys
import threading


def announce_port(port):
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


def serve_tcp(port, handle):
    """Listens on 127.0.0.1:port (0 = any free port), announces the port, and
    runs handle(sock, addr) in a daemon thread for every connection. Never returns."""
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(256)
    announce_port(ls.getsockname()[1])
    while True:
        s, addr = ls.accept()
        threading.Thread(target=handle, args=(s, addr), daemon=True).start()


async def announce_and_serve(server):
    """Announces the port of an asyncio/websockets server, then serves forever."""
    announce_port(server.sockets[0].getsockname()[1])
    await asyncio.Future()


def run(main):
    """asyncio.run(main()); Ctrl-C ends it quietly."""
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
