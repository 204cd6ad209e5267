"""Static files (browser client, demo): only files present at start are served."""

from __future__ import annotations

from pathlib import Path

from gateway.server import load_static


def test_only_known_files_under_the_root_are_served(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "index.html").write_text("<h1>demo</h1>")
    (tmp_path / "demo" / "app.js").write_text("export {}")
    (tmp_path / "secret.env").write_text("KEY=1")  # not a served type
    files = load_static(tmp_path)
    assert files["/demo/index.html"] == ("text/html; charset=utf-8", b"<h1>demo</h1>")
    assert files["/demo/"] == files["/demo"] == files["/demo/index.html"]
    assert files["/demo/app.js"][0].startswith("text/javascript")
    assert "/secret.env" not in files
    assert not any(".." in url for url in files)


def test_dangling_links_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "gone.js").symlink_to(tmp_path / "nowhere.js")
    assert load_static(tmp_path) == {}


def test_missing_root_serves_nothing(tmp_path: Path) -> None:
    assert load_static(tmp_path / "absent") == {}
