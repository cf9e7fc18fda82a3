"""The restore page in a real browser (issue 13): Debian's chromium driven by Playwright, against
a real strongroom-server and snapshots made by the real client, with keys wrapped at the real
Argon2id cost (the page's floor has no test switch).

Chromium registers no service worker on a certificate it does not trust, even one clicked
through; these tests start it with --ignore-certificate-errors, as a browser that trusts the
server's certificate would be, so downloads take the page's streaming path through its worker.
The tampered-blob test blocks the worker (Playwright cannot intercept requests of pages a
worker controls), which also covers the in-memory fallback. A failing test leaves a
screenshot in tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Route,
    expect,
)

from browserfixtures import ARTIFACTS, launch
from consolefixtures import console_server
from netfixtures import ADMIN_PASSWORD, NetCli, Server
from restorefixtures import REAL_KDF, Http, real_kdf_user
from strongroom import crypto
from strongroom.keys import KeyFile, unwrap

pytestmark = pytest.mark.timeout(300)
# Key derivation, decryption and the downloads run in the browser: on a busy two-core machine
# a step can take longer than expect()'s default 5 s.
expect.set_options(timeout=30_000)

VECTORS = Path(__file__).parent / "vectors" / "restore-vectors.json"
USER = "ann"
PASSWORD = "ann's restore pass ⚡ 2026"
# 512 MiB in the suite (about 20 s of backup and download on two idle cores); the memory a
# download needs does not grow with the size (1 GiB: STRONGROOM_TEST_BIG_MIB=1024).
BIG_MIB = int(os.environ.get("STRONGROOM_TEST_BIG_MIB", "512"))


def png(width: int, height: int) -> bytes:
    """A real PNG (a red rectangle) for the image preview."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\0" + b"\xd0\x30\x20" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def make_source(src: Path) -> None:
    rng = random.Random(13)
    (src / "docs" / "notes").mkdir(parents=True)
    (src / "photos").mkdir()
    (src / "data").mkdir()
    (src / "empty folder").mkdir()
    (src / "docs" / "report.txt").write_text("quarterly numbers, all confidential\n" * 500)
    (src / "docs" / "notes" / "ideas.md").write_text("# Ideas\n- strongroom restore page\n")
    (src / "photos" / "red-square.png").write_bytes(png(24, 16))
    (src / "Ünïcödé ✓ 日本.txt").write_text("a name that is not ASCII\n")
    (src / "data" / "random.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 17))
    (src / "data" / "zeros.bin").write_bytes(bytes(2 * 1024 * 1024))
    (src / "data" / "empty.txt").write_bytes(b"")
    os.symlink("docs/report.txt", src / "shortcut")
    with open(src / "data" / "disk.img", "wb") as f:  # sparse: data, a 2 MiB hole, data, a hole
        f.write(rng.randbytes(10_000))
        f.seek(10_000 + 2 * 1024 * 1024)
        f.write(rng.randbytes(20_000))
        f.truncate(5 * 1024 * 1024)


# Names that must never reach the server in plaintext (every one is distinctive enough that
# a chance match in binary data is out of the question).
NAMES = [
    "report.txt",
    "ideas.md",
    "red-square.png",
    "Ünïcödé ✓ 日本.txt",
    "random.bin",
    "zeros.bin",
]
NAMES += ["empty folder", "quarterly numbers"]  # a folder name and a file's content


@dataclass
class World:
    server: Server
    ann: NetCli
    src: Path
    base: str
    secrets: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("restore-browser")
    server = console_server(tmp, env=REAL_KDF)
    try:
        ann = real_kdf_user(server, USER, PASSWORD, tmp)
        src = tmp / "src"
        src.mkdir()
        make_source(src)
        ann.backup(src)
        # A second snapshot: the report changed, the rest did not.
        with open(src / "docs" / "report.txt", "a") as f:
            f.write("one more line in the second snapshot\n")
        ann.backup(src)
        world = World(server, ann, src, f"https://127.0.0.1:{server.web_port}")
        world.secrets = _secrets(world)
        yield world
    finally:
        server.kill()


def _secrets(world: World) -> dict[str, bytes]:
    """The password and everything derived from it that must stay in the browser."""
    http = Http(world.server.web_port)
    p = http.post("/api/user/auth-params", {"user": USER}).json()
    params = crypto.KdfParams(p["memory_kib"], p["iterations"], p["lanes"])
    master = crypto.derive_master(PASSWORD.encode(), base64.b64decode(p["salt"]), params)
    pk = crypto.split_master(master)
    login = http.post(
        "/api/user/login", {"user": USER, "auth_key": base64.b64encode(pk.auth_key).decode()}
    ).json()
    keys = unwrap(KeyFile.from_json(login["keyfile"]), pk.kek)
    http.call("POST", "/api/user/logout", b"{}", session=login["session"])
    return {
        "password": PASSWORD.encode(),
        "master": master,
        "kek": pk.kek,
        "data key": keys.data_key,
        "id key": keys.id_key,
    }


def _forms(secret: bytes) -> list[bytes]:
    """How a secret could travel: raw, hex, base64 (standard and URL-safe), JSON-escaped."""
    forms = [secret, secret.hex().encode(), base64.b64encode(secret).rstrip(b"=")]
    forms.append(base64.urlsafe_b64encode(secret).rstrip(b"="))
    try:
        text = secret.decode()
    except UnicodeDecodeError:
        return forms
    forms.append(json.dumps(text)[1:-1].encode())
    forms.append(json.dumps(text, ensure_ascii=False)[1:-1].encode())
    return forms


def _leaks(data: bytes, world: World) -> list[str]:
    found = []
    for name, secret in world.secrets.items():
        if any(f in data for f in _forms(secret)):
            found.append(name)
    for name in NAMES:
        if any(f in data for f in _forms(name.encode())):
            found.append(repr(name))
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # A browser that trusts the server's certificate (see the module's docstring).
    yield from launch("--ignore-certificate-errors")


@dataclass
class Tab:
    page: Page
    context: BrowserContext
    requests: list[Request]
    errors: list[str]


def _open(browser: Browser, request: pytest.FixtureRequest, **options: Any) -> Iterator[Tab]:
    context = browser.new_context(
        ignore_https_errors=True,
        accept_downloads=True,
        viewport={"width": 1280, "height": 900},
        **options,
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    tab = Tab(page, context, [], [])
    context.on("request", lambda r: tab.requests.append(r))
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(str(e)))
    try:
        yield tab
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()


@pytest.fixture
def tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Tab]:
    yield from _open(browser, request)


def sign_in(tab: Tab, world: World, user: str = USER, password: str = PASSWORD) -> None:
    page = tab.page
    page.goto(world.base + "/restore/")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def open_latest(page: Page) -> None:
    page.locator("table.snapshots tbody tr").first.get_by_role("button").first.click()
    page.get_by_role("button", name="open folder src").click()
    expect(page.get_by_role("heading", name="src")).to_be_visible()


def row(page: Page, name: str) -> Any:
    return page.locator("tr", has=page.get_by_role("button", name=f"details of {name}", exact=True))


def download(page: Page, click: Any, timeout: float = 60_000) -> Path:
    with page.expect_download(timeout=timeout) as info:
        click()
    d = info.value
    assert d.failure() is None, d.failure()
    return Path(d.path())


def test_the_vectors_run_in_the_browser(tab: Tab, world: World) -> None:
    # The page's own decoding code (the built bundle) against the vectors the Python code
    # checks in tests/test_restore_vectors.py.
    tab.page.goto(world.base + "/restore/")
    doc = json.loads(VECTORS.read_text())
    report = tab.page.evaluate(
        "async (doc) => (await import('/restore/vectors.js')).runVectors(doc)", doc
    )
    assert report["failures"] == []
    expected = 2 + 2 + sum(len(doc[k]) for k in ("blobs", "bad_blobs", "trees", "bad_trees"))
    expected += len(doc["records"]) + len(doc["bad_records"]) + 1
    assert report["passed"] == expected


def test_sign_in_browse_search_preview_and_download(tab: Tab, world: World) -> None:
    page = tab.page
    sign_in(tab, world, password="not the password")
    expect(page.get_by_role("alert")).to_have_text("wrong user name or password")
    sign_in(tab, world)
    expect(page.get_by_role("heading", name="Snapshots")).to_be_visible()
    expect(page.locator("table.snapshots tbody tr")).to_have_count(2)
    expect(page.get_by_text("2 snapshots, newest first")).to_be_visible()
    open_latest(page)
    for name in ("docs", "photos", "data", "empty folder"):
        expect(page.get_by_role("button", name=f"open folder {name}", exact=True)).to_be_visible()
    expect(row(page, "Ünïcödé ✓ 日本.txt")).to_be_visible()
    expect(page.get_by_text("→ docs/report.txt")).to_be_visible()  # the link, shown

    # One file, streamed through the worker and verified, byte for byte.
    page.get_by_role("button", name="open folder data").click()
    got = download(page, lambda: row(page, "random.bin").get_by_role("button").last.click())
    assert got.read_bytes() == (world.src / "data" / "random.bin").read_bytes()
    done = page.locator("li.download").first
    expect(done).to_have_attribute("data-state", "done")
    assert done.get_attribute("data-sink") == "worker"
    # A sparse file: its holes come back as zeros between the data.
    got = download(page, lambda: row(page, "disk.img").get_by_role("button").last.click())
    assert got.read_bytes() == (world.src / "data" / "disk.img").read_bytes()

    # Search by name across the snapshot's folders.
    page.get_by_label("Search names in this snapshot").fill("REPORT")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("1 match in 7 folders.")).to_be_visible()
    page.get_by_role("button", name="details of report.txt").click()

    # The file's versions: changed between the two snapshots; text preview.
    expect(page.get_by_role("heading", name="report.txt")).to_be_visible()
    expect(page.get_by_text("In 2 snapshots of 2, newest first.")).to_be_visible()
    expect(page.locator("table.versions tbody tr")).to_have_count(2)
    expect(page.locator("table.versions tr.current")).to_contain_text("this one")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator(".preview-text pre")).to_contain_text("one more line in the second")
    older = download(
        page,
        lambda: page.locator("table.versions tbody tr").last.get_by_role("button").last.click(),
    )
    assert older.read_text() == "quarterly numbers, all confidential\n" * 500

    # An image preview.
    page.get_by_role("button", name="src", exact=True).click()
    page.get_by_role("button", name="open folder photos").click()
    page.get_by_role("button", name="details of red-square.png").click()
    page.get_by_role("button", name="Preview").click()
    image = page.locator(".preview-image img")
    expect(image).to_be_visible()
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [24, 16]

    # The whole folder as a zip built in the browser: every file's bytes, every folder.
    page.get_by_role("button", name="src", exact=True).click()
    zipped = download(
        page, lambda: page.get_by_role("button", name="Download folder as zip").click()
    )
    expect(page.get_by_role("status")).to_contain_text("shortcut (a link)")
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
        for path in world.src.rglob("*"):
            rel = "src/" + path.relative_to(world.src).as_posix()
            if path.is_symlink():
                assert rel not in names
            elif path.is_dir():
                assert rel + "/" in names
            else:
                assert z.read(rel) == path.read_bytes(), rel
        assert z.testzip() is None

    # Nothing the page sent carries the password, a key or a plaintext name.
    _no_leaks(tab, world)


def _no_leaks(tab: Tab, world: World) -> None:
    assert tab.requests, "no request was captured"
    for req in tab.requests:
        sent = req.url.encode() + json.dumps(req.all_headers()).encode()
        sent += req.post_data_buffer or b""
        assert not _leaks(sent, world), (req.method, req.url, _leaks(sent, world))
    assert {r.url.split("?")[0].rsplit("/", 1)[-1] for r in tab.requests} >= {
        "auth-params",
        "login",
        "snapshots",
        "blobs",
    }
    # Nor does what the server wrote: its log and its whole data folder.
    assert not _leaks(world.server.log.read_bytes(), world), "server log"
    for path in world.server.data_dir.rglob("*"):
        if path.is_file():
            assert not _leaks(path.read_bytes(), world), path


def test_an_account_that_must_change_its_password_is_sent_to_the_client(
    tab: Tab, world: World
) -> None:
    world.server.admin("user", "add", "bob", "--password-stdin", input=ADMIN_PASSWORD + "\n")
    sign_in(tab, world, "bob", ADMIN_PASSWORD)
    alert = tab.page.get_by_role("alert")
    expect(alert).to_contain_text("your password was set by the admin")
    expect(alert).to_contain_text("strongroom passwd")
    expect(tab.page.get_by_role("button", name="Sign in")).to_be_visible()


def test_a_phone_screen(tab: Tab, world: World) -> None:
    page = tab.page
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(tab, world)
    expect(page.locator("table.snapshots tbody tr")).to_have_count(2)
    open_latest(page)
    page.get_by_role("button", name="open folder data").click()
    expect(row(page, "random.bin")).to_be_visible()
    # Nothing wider than the screen: no sideways scrolling of the page.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "restore-phone.png"), full_page=True)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You signed out.")).to_be_visible()


@pytest.fixture
def blocked_tab(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Tab]:
    yield from _open(browser, request, service_workers="block")


def test_a_tampered_blob_is_refused(blocked_tab: Tab, world: World) -> None:
    tab = blocked_tab
    page = tab.page
    # No worker and no save dialog here: downloads are assembled in memory.
    page.add_init_script(
        "delete Window.prototype.showSaveFilePicker; delete window.showSaveFilePicker"
    )
    sign_in(tab, world)
    open_latest(page)
    page.get_by_role("button", name="open folder data").click()
    got = download(page, lambda: row(page, "zeros.bin").get_by_role("button").last.click())
    assert got.read_bytes() == bytes(2 * 1024 * 1024)
    expect(page.locator("li.download").first).to_have_attribute("data-sink", "memory")

    # The server (or someone between) changes one byte of a blob of random.bin's content.
    tampered = []

    def flip(route: Route) -> None:
        response = route.fetch()
        body = bytearray(response.body())
        at = 0
        while at < len(body):
            length = struct.unpack_from(">I", body, at + 33)[0]
            if body[at + 32] == 0 and length > 100_000:
                body[at + 37 + length // 2] ^= 0x01
                tampered.append(bytes(body[at : at + 32]).hex())
                break
            at += 37 + length
        route.fulfill(response=response, body=bytes(body))

    page.route("**/api/user/blobs", flip)
    row(page, "random.bin").get_by_role("button").last.click()
    failed = page.locator("li.download").first
    expect(failed).to_have_attribute("data-state", "failed")
    assert tampered
    expect(failed).to_contain_text(f"blob {tampered[0][:16]} failed authentication")
    expect(failed).to_contain_text("no unverified byte was written")


# The save-file picker, answered with a file in the origin's private file system (OPFS):
# headless chromium shows no dialog, and OPFS handles write through the same createWritable().
FAKE_PICKER = """
window.showSaveFilePicker = async ({ suggestedName }) => {
  window.pickedName = suggestedName;
  const dir = await navigator.storage.getDirectory();
  return dir.getFileHandle(suggestedName, { create: true });
};
"""


def test_a_download_through_the_save_file_picker(blocked_tab: Tab, world: World) -> None:
    # Without the worker (a certificate the browser does not trust), Chromium's save dialog.
    page = blocked_tab.page
    page.add_init_script(FAKE_PICKER)
    sign_in(blocked_tab, world)
    open_latest(page)
    page.get_by_role("button", name="open folder data").click()
    row(page, "random.bin").get_by_role("button").last.click()
    done = page.locator("li.download").first
    expect(done).to_have_attribute("data-state", "done")
    assert done.get_attribute("data-sink") == "picker"
    digest = page.evaluate(
        """async () => {
        const dir = await navigator.storage.getDirectory();
        const file = await (await dir.getFileHandle(window.pickedName)).getFile();
        const hash = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
        const hex = [...new Uint8Array(hash)].map((b) => b.toString(16).padStart(2, "0"));
        return [file.size, hex.join("")];
    }"""
    )
    data = (world.src / "data" / "random.bin").read_bytes()
    assert digest == [len(data), hashlib.sha256(data).hexdigest()]


class MemoryProbe:
    """Samples the total proportional memory (PSS) of every chromium process started from
    this test process, every 0.2 s, from a thread (reading /proc needs no browser call)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(chromium_pss())

    def __enter__(self) -> MemoryProbe:
        self.samples.append(chromium_pss())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def chromium_pss() -> int:
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        names[pid] = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(pid)
    total = 0
    todo = list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if "chrom" not in names.get(pid, ""):
            continue
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def test_a_large_file_downloads_with_bounded_memory(tab: Tab, world: World, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    digest = hashlib.sha256()
    with open(big / "large.bin", "wb") as f:
        for _ in range(BIG_MIB // 16):
            piece = os.urandom(16 * 1024 * 1024)
            digest.update(piece)
            f.write(piece)
    # An account of its own: the other tests' snapshots stay as they are.
    lea = real_kdf_user(world.server, "lea", "lea's own password 99", tmp_path)
    lea.backup(big)
    page = tab.page
    sign_in(tab, world, "lea", "lea's own password 99")
    page.locator("table.snapshots tbody tr").first.get_by_role("button").first.click()
    page.get_by_role("button", name="open folder big").click()
    cdp = tab.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    heap: list[int] = []

    def js_heap() -> int:
        metrics = cdp.send("Performance.getMetrics")["metrics"]
        return int(next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize"))

    heap.append(js_heap())
    started = time.monotonic()
    with MemoryProbe() as probe:
        with page.expect_download(timeout=240_000) as info:
            row(page, "large.bin").get_by_role("button").last.click()
        state = page.locator("li.download").first
        while state.get_attribute("data-state") == "running":
            heap.append(js_heap())
            time.sleep(0.5)
        assert info.value.failure() is None
        path = Path(info.value.path())
    seconds = time.monotonic() - started
    expect(state).to_have_attribute("data-state", "done")
    assert path.stat().st_size == BIG_MIB * 1024 * 1024
    with open(path, "rb") as f:
        assert hashlib.file_digest(f, "sha256").digest() == digest.digest()
    path.unlink()
    mib = 1024 * 1024
    base, peak = probe.samples[0], max(probe.samples)
    half = len(probe.samples) // 2
    first, second = max(probe.samples[:half]), max(probe.samples[half:])
    figures = (
        f"{BIG_MIB} MiB in {seconds:.1f} s ({BIG_MIB / seconds:.0f} MiB/s); chromium PSS "
        f"{base / mib:.0f} MiB before, peak {peak / mib:.0f} MiB (+{(peak - base) / mib:.0f}; "
        f"first half's peak {first / mib:.0f}, second half's {second / mib:.0f}); "
        f"page JS heap peak {max(heap) / mib:.0f} MiB"
    )
    print(figures)
    ARTIFACTS.mkdir(exist_ok=True)
    series = " ".join(f"{v / mib:.0f}" for v in probe.samples[:: max(1, len(probe.samples) // 40)])
    (ARTIFACTS / "restore-large-file.txt").write_text(f"{figures}\nPSS MiB over time: {series}\n")
    # Bounded: the browser holds a few batches of blobs (and what its garbage collector has
    # not freed yet), never the file: the second half of the download needs no more memory
    # than the first, and the whole stays well below the file's size.
    assert second - first < 150 * mib, figures
    assert peak - base < 600 * mib, figures
    assert max(heap) < 150 * mib, figures
