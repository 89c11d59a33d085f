"""The image build's pure parts: wheel selection for the image's interpreter, the lock, layer tars."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from devtools import image, oci

pytestmark = pytest.mark.unit


def test_wheels_are_chosen_for_bookworms_python_not_the_hosts() -> None:
    tags = image.wheel_tags()
    assert tags[tags.index("--python-version") + 1] == "3.11"
    platforms = [tags[i + 1] for i, option in enumerate(tags) if option == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert {tags[i + 1] for i, option in enumerate(tags) if option == "--abi"} == {"cp311", "abi3", "none"}


def test_the_lock_pins_every_install_requirement_by_hash() -> None:
    pinned = {}
    for line in image.LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"([a-z0-9_.-]+)==(\S+) --hash=sha256:[0-9a-f]{64}", line)
            assert match, f"hack/image-requirements.txt: {line!r} is not `name==version --hash=sha256:...`"
            pinned[match[1].replace("_", "-")] = match[2]
    for requirement in image.install_requires():
        name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} (setup.cfg install_requires) is missing from the lock: python -m devtools.image lock"


def test_lock_lines_come_from_a_pip_report() -> None:
    report = {"install": [
        {"metadata": {"name": "Flask", "version": "3.1.3"}, "download_info": {"archive_info": {"hashes": {"sha256": "ab"}}}},
        {"metadata": {"name": "blinker", "version": "1.9.0"}, "download_info": {"archive_info": {"hashes": {"sha256": "cd"}}}},
    ]}
    assert image.lock_lines(report) == ["blinker==1.9.0 --hash=sha256:cd", "flask==3.1.3 --hash=sha256:ab"]


def test_cache_keys_follow_the_recipe() -> None:
    assert image.debian_key() == image.debian_key()
    assert image.deps_key("a", "flask==1") != image.deps_key("a", "flask==2") != image.deps_key("b", "flask==2")


def _members(blob: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob.read_bytes()))) as tar:
        return tar.getmembers()


def test_directory_layers_keep_hard_links_and_are_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/a").write_text("x")
    os.link(root / "usr/bin/a", root / "usr/bin/b")
    (root / "usr/bin/c").symlink_to("a")
    first = oci.directory_layer(root, tmp_path / "one.tar.gz", clamp_mtime=1000)
    second = oci.directory_layer(root, tmp_path / "two.tar.gz", clamp_mtime=1000)
    assert (first.digest, first.diff_id) == (second.digest, second.diff_id)
    members = {m.name: m for m in _members(tmp_path / "one.tar.gz")}
    assert list(members) == ["usr", "usr/bin", "usr/bin/a", "usr/bin/b", "usr/bin/c"]
    assert members["usr/bin/b"].islnk() and members["usr/bin/b"].linkname == "usr/bin/a"
    assert members["usr/bin/c"].issym() and {m.mtime for m in members.values()} == {1000}
