"""Build a bucket image without a registry: a static busybox rootfs plus the bucket's files.

Machines without registry access (and the tests) cannot ``FROM busybox``; a folder with
``/bin/busybox`` and its applet links, packed as a tar and given to ``<engine> import``,
is a complete image for shell-script buckets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from magickbox.buckets.container import IMAGE_INFO, ContainerError, Engine

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static


def busybox_applets(busybox: Path) -> list[str]:
    res = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    return [name for name in res.stdout.split() if name and "/" not in name]


def make_rootfs(root: Path, files: dict[str, Path | bytes], busybox: Path = BUSYBOX) -> None:
    """A busybox root filesystem in ``root`` with ``files`` (image path -> source) added."""
    if not busybox.is_file():
        raise ContainerError(f"{busybox} is missing (apt-get install busybox-static)")
    for folder in ("bin", "tmp", "root/storage", "input", "output", "memory", "etc"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in busybox_applets(busybox):
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    # Ids the box may run a bucket as have names, so tools like `id` and `ls` stay quiet.
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    for target, source in files.items():
        dest = root / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            dest.write_bytes(source)
        else:
            shutil.copy2(source, dest)
        if dest.name.endswith(".sh"):
            dest.chmod(0o755)


def import_rootfs(engine: Engine, root: Path, tag: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
        res = engine.call("import", str(tar), tag, timeout=600)
    if res.returncode != 0:
        raise ContainerError(f"{engine.name} import failed: {res.stderr.strip()}")


def build_image(engine: Engine, tag: str, files: dict[str, Path | bytes]) -> None:
    """Build image ``tag`` from busybox and ``files`` (image path -> source file or bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        make_rootfs(Path(tmp) / "rootfs", files)
        import_rootfs(engine, Path(tmp) / "rootfs", tag)


def build_bucket_image(engine: Engine, bucket_dir: Path, tag: str) -> None:
    """A native bucket folder as an image: work.sh at /root/work.sh, info.json in storage.

    Everything else in the folder goes to /root/ too, so helper scripts come along.
    """
    info = json.loads((bucket_dir / "info.json").read_text())
    info.pop("image", None)
    files: dict[str, Path | bytes] = {IMAGE_INFO: json.dumps(info, indent=2).encode()}
    for entry in sorted(bucket_dir.iterdir()):
        if entry.is_file() and entry.name != "info.json":
            files[f"/root/{entry.name}"] = entry
    build_image(engine, tag, files)
