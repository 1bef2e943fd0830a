"""The labelling page over HTTP: Starlette routes served by uvicorn on one local socket.

Every asset is in ``static/`` beside this file (no CDN, nothing fetched from elsewhere). The
routes are thin: each calls :class:`~animefaces.label.session.LabelSession` and returns JSON.
A refused write (another page or program changed the manifest) is HTTP 409 with the message the
page shows; other problems the user can fix are 400 with theirs.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from ..errors import AnimeFacesError
from .session import LabelSession
from .store import ManifestChanged

STATIC = Path(__file__).resolve().parent / "static"
_BROWSER_FORMATS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
_THUMB = 220


def _need_web_stack():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise AnimeFacesError("the labelling page needs Starlette and uvicorn: pip install "
                              "'animefaces[label]' (or bash scripts/bootstrap.sh)") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_warning(host: str) -> str | None:
    """The warning printed when the page listens on more than this machine, else None."""
    if is_loopback(host):
        return None
    return (f"warning: listening on {host}: anyone who can reach this machine can see the frames "
            f"and change the labels (there is no login); use the default 127.0.0.1 unless this "
            f"network is yours")


class SweepRunner:
    """``animefaces sweep`` on the labelled frames, in a child process, one at a time."""

    def __init__(self, session: LabelSession, *, extra: list[str]):
        self.session, self.extra = session, extra
        self.proc = None
        self.log: deque[str] = deque(maxlen=60)
        self.command: list[str] | None = None
        self.manifest = None

    def start(self) -> dict:
        from .interop import write_sweep_manifest

        if self.proc is not None and self.proc.poll() is None:
            raise AnimeFacesError("a sweep is already running; wait for it to finish")
        out, how, n = write_sweep_manifest(self.session.store)
        self.manifest = str(out)
        self.command = [sys.executable, "-m", "animefaces.cli", "sweep", "--data", str(out),
                        *self.extra]
        self.log.clear()
        self.log.append(f"{n} labelled frames -> {out} (splits: {how})")
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self.status()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.log.append(line.rstrip()[-300:])
        proc.wait()

    def status(self) -> dict:
        rc = None if self.proc is None else self.proc.poll()
        return {"running": self.proc is not None and rc is None, "returncode": rc,
                "command": " ".join(["animefaces"] + self.command[3:]) if self.command else None,
                "manifest": self.manifest, "log": list(self.log)}


def build_app(session: LabelSession, *, sweep_args: list[str] | None = None):
    """The Starlette application for one session."""
    _need_web_stack()
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    sweep = SweepRunner(session, extra=list(sweep_args or []))
    thumbs: dict[int, bytes] = {}

    def fail(exc: Exception) -> JSONResponse:
        conflict = isinstance(exc, ManifestChanged)
        return JSONResponse({"error": str(exc), "conflict": conflict}, status_code=409 if conflict else 400)

    def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def state(request: Request):
        return JSONResponse(dict(session.state(), sweep=sweep.status()))

    def next_items(request: Request):
        n = min(200, max(1, int(request.query_params.get("n", 5))))
        return JSONResponse({"items": session.next_items(n), "version": session.store.version})

    def item(request: Request):
        try:
            return JSONResponse(session.item(int(request.path_params["i"])))
        except AnimeFacesError as exc:
            return fail(exc)

    def grid(request: Request):
        q = request.query_params
        try:
            items = session.grid(q.get("which", "queue"), n=min(500, int(q.get("n", 60))),
                                 offset=max(0, int(q.get("offset", 0))))
        except AnimeFacesError as exc:
            return fail(exc)
        return JSONResponse({"items": items})

    async def label(request: Request):
        body = await request.json()
        try:
            out = await _in_thread(session.label, int(body["i"]), str(body.get("label", "")),
                                   picked=str(body.get("picked", "browse")),
                                   expect=body.get("version"))
        except (AnimeFacesError, KeyError, ValueError) as exc:
            return fail(exc)
        return JSONResponse(out)

    async def undo(request: Request):
        body = await request.json()
        try:
            return JSONResponse(await _in_thread(session.undo, expect=body.get("version")))
        except AnimeFacesError as exc:
            return fail(exc)

    def refit(request: Request):
        return JSONResponse({"started": session.maybe_refit(force=True)})

    def run_sweep(request: Request):
        try:
            return JSONResponse(sweep.start())
        except AnimeFacesError as exc:
            return fail(exc)

    def image(request: Request):
        i = int(request.path_params["i"])
        if not 0 <= i < len(session.store.rows):
            return Response("no such frame", status_code=404)
        path = session.store.image_path(i)
        try:
            from ..data.images import check_image_file

            check_image_file(path)
        except (AnimeFacesError, OSError) as exc:
            return Response(f"cannot read {path.name}: {exc}", status_code=404)
        if path.suffix.lower() in _BROWSER_FORMATS:
            return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
        return Response(_jpeg(path, None), media_type="image/jpeg")

    def thumb(request: Request):
        i = int(request.path_params["i"])
        if not 0 <= i < len(session.store.rows):
            return Response("no such frame", status_code=404)
        if i not in thumbs:
            try:
                thumbs[i] = _jpeg(session.store.image_path(i), _THUMB)
            except (AnimeFacesError, OSError) as exc:
                return Response(f"cannot read: {exc}", status_code=404)
            if len(thumbs) > 2000:
                thumbs.pop(next(iter(thumbs)))
        return Response(thumbs[i], media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    routes = [
        Route("/", index), Route("/api/state", state), Route("/api/next", next_items),
        Route("/api/item/{i:int}", item), Route("/api/grid", grid),
        Route("/api/label", label, methods=["POST"]), Route("/api/undo", undo, methods=["POST"]),
        Route("/api/refit", refit, methods=["POST"]), Route("/api/sweep", run_sweep, methods=["POST"]),
        Route("/image/{i:int}", image), Route("/thumb/{i:int}", thumb),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)


async def _in_thread(fn, *args, **kwargs):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kwargs)


def _jpeg(path: Path, size: int | None) -> bytes:
    from ..data.images import open_image

    img = open_image(path, draft_size=(size, size) if size else None)
    if size:
        img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def bind(host: str = "127.0.0.1", port: int = 0) -> tuple[socket.socket, str]:
    """A listening socket on ``host:port`` (0: a free port) and the page's URL."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AnimeFacesError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another "
                              f"--port (0: any free one)") from None
    sock.listen(64)
    sock.set_inheritable(True)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"http://{shown}:{sock.getsockname()[1]}/"


def serve(session: LabelSession, *, host: str = "127.0.0.1", port: int = 0,
          sweep_args: list[str] | None = None, out=sys.stdout) -> None:
    """Take the manifest's session lock, print the URL and serve until Ctrl-C / SIGTERM.

    Raises:
        ManifestBusy: another labelling process has the manifest open.
    """
    _need_web_stack()
    import uvicorn

    app = build_app(session, sweep_args=sweep_args)
    sock, url = bind(host, port)
    try:
        session.store.acquire(owner=f"serving {url}")
    except AnimeFacesError:
        sock.close()
        raise
    try:
        warning = host_warning(host)
        if warning:
            print(warning, file=sys.stderr)
        print(f"animefaces label: {url}  ({session.store.path}, {len(session.store.rows)} frames;"
              f" Ctrl-C to stop)", file=out, flush=True)
        session.start()
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        session.store.release()
        sock.close()


def wait_for(url: str, *, timeout: float = 30.0) -> None:
    """Wait until the page answers (tests, the screenshot script)."""
    import urllib.request

    t_end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "api/state", timeout=2) as r:
                r.read()
            return
        except OSError:
            if time.monotonic() > t_end:
                raise
            time.sleep(0.1)

