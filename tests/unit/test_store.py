"""The landing's listing: a local folder walked with ``os.scandir`` gives the same files, sizes
and modification times as fsspec's walk (what the ledger's fingerprints were made from), links
left out as fsspec leaves them."""

from __future__ import annotations

import os

from core.store import filesystem, listings


def fsspec_listing(location) -> dict[str, tuple[int, float]]:
    found = {}
    for _dirpath, _dirs, files in location.fs.walk(location.root, detail=True):
        found.update({location.relative(i["name"]): (i["size"], i["mtime"])
                      for i in files.values() if i.get("type", "file") == "file"})
    return found


def test_a_local_listing_matches_fsspecs_walk(tmp_path) -> None:
    (tmp_path / "2026-11-20" / "buoy-1").mkdir(parents=True)
    (tmp_path / "2026-11-20" / "buoy-1" / "a.jpg").write_bytes(b"jpeg")
    (tmp_path / "2026-11-20" / "buoy-1" / "a.json").write_bytes(b"{}")
    (tmp_path / "readings.csv").write_bytes(b"device_id\n")
    (tmp_path / "empty").mkdir()
    os.symlink(tmp_path / "2026-11-20" / "buoy-1" / "a.jpg", tmp_path / "link.jpg")
    os.symlink(tmp_path / "2026-11-20", tmp_path / "linked-day")
    location = filesystem(tmp_path.as_uri())
    ours = {key: (info["size"], info["mtime"]) for listing in listings(location)
            for key, info in listing.items()}
    assert ours == fsspec_listing(location)
    assert sorted(ours) == ["2026-11-20/buoy-1/a.jpg", "2026-11-20/buoy-1/a.json",
                            "readings.csv"]


def test_a_missing_landing_lists_nothing(tmp_path) -> None:
    assert [dict(x) for x in listings(filesystem((tmp_path / "nowhere").as_uri()))] == []
