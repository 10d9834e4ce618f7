"""The seed's manual page, run verbatim: dcmtk storescu, curl and jq against a real box.

The commands below are copied from "How to process a large number of subjects" of the
original manual; only its placeholders (<ip of MB>, ports, the DICOM folder) are filled
in, and port 2813 becomes this server's web port. The manual wraps long lines with a
backslash; inside jq's single quotes that is no shell continuation (jq would see the
backslash), so each command is joined into the one line a user types.
"""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from magickbox.testing.dicomgen import write_study
from tests.conftest import BoxServer, dcmtk

pytestmark = pytest.mark.e2e

SEND = r"""storescu +sd +r -nh -aet MySelf -aec ProcBucket \
  <ip of MagickBox> <port of MagickBox> <single DICOM directory>"""

LIST_FINISHED = r"""curl http://<ip of MB>:2813/code/php/getScratch.php | jq '.[] | \
  select(.AETitleCaller=="ip44" and .processingTime!="0")'"""

COUNT_PENDING = r"""curl http://<ip of MB>:2813/code/php/getScratch.php | jq -c -M '.[] | \
  select(.AETitleCaller=="ip44" and .processingTime=="0")' | wc -l"""

FILE_LIST = r"""fileList=`curl <ip of MB>:2813/code/php/getScratch.php | jq '.[] | \
  select(.AETitleCaller=="ip44" and .processingTime!="0")' | \
  jq '{"scratchdir": .scratchdir, "pid": .pid}'`"""

DOWNLOAD = r"""echo $fileList | jq -c -M . | while read line; do sc=`echo $line | \
  cut -d'"' -f4`; d=`echo $line | cut -d'"' -f8`; mkdir -p "$d"; cd $d; \
  curl -o ${d}.zip http://<ip of MB>:2813/code/php/getOutputZip.php?folder=$sc; \
  cd ..; done"""

DELETE = r"""echo $fileList | jq -c -M . | while read line; do sc=`echo $line | \
  cut -d'"' -f4`; d=`echo $line | cut -d'"' -f8`; mkdir -p "$d"; cd $d; \
  curl http://<ip of MB>:2813/code/php/deleteStudy.php?scratchdir=$sc; \
  cd ..; done"""


def fill(command: str, box: BoxServer, folder: Path | None = None) -> str:
    command = re.sub(r"\\\n\s*", "", command)
    return (
        command.replace("<ip of MB>", "127.0.0.1")
        .replace("<ip of MagickBox>", "127.0.0.1")
        .replace("<port of MagickBox>", str(box.dicom_port))
        .replace("<single DICOM directory>", str(folder))
        .replace(":2813/", f":{box.web_port}/")
    )


def bash(script: str, cwd: Path, bindir: Path) -> str:
    """Run like a user's shell: dcmtk's storescu first on PATH, TCP_NODELAY as in the README."""
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "TCP_NODELAY": "1"}
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def bindir(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "storescu").symlink_to(dcmtk("storescu"))
    return folder


def test_seed_workflow_verbatim(box: BoxServer, tmp_path: Path, bindir: Path) -> None:
    studies = [
        write_study(tmp_path / f"subject{i}", n_images=4, rows=64, cols=64) for i in range(3)
    ]
    work = tmp_path / "work"
    work.mkdir()
    # Three subjects sent back to back as ip44 (no sleep between sends), one as MySelf.
    for study in studies:
        bash(fill(SEND.replace("MySelf", "ip44"), box, study.paths[0].parent), work, bindir)
    other = write_study(tmp_path / "other", n_images=2, rows=32, cols=32)
    bash(fill(SEND, box, other.paths[0].parent), work, bindir)

    box.wait_jobs(4, finished=True, timeout=120)
    assert bash(fill(COUNT_PENDING, box), work, bindir).strip() == "0"

    finished = bash(fill(LIST_FINISHED, box), work, bindir)
    assert finished.count('"AETitleCaller": "ip44"') == 3
    assert "MySelf" not in finished

    bash(fill(FILE_LIST, box) + "\n" + fill(DOWNLOAD, box), work, bindir)
    by_study = {s.study_uid: s for s in studies}
    downloaded = sorted(p.name for p in work.iterdir())
    assert downloaded == sorted(by_study)
    for study_uid, study in by_study.items():
        archive = work / study_uid / f"{study_uid}.zip"
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            assert zf.testzip() is None
        scratchdir = names[0].split("/")[0]
        assert all(n.startswith(f"{scratchdir}/OUTPUT/") for n in names)
        derived = [n for n in names if n.endswith(".dcm")]
        assert len(derived) == len(study.paths)  # one edge image per input image
        assert f"{scratchdir}/OUTPUT/summary.json" in names

    out = bash(fill(FILE_LIST, box) + "\n" + fill(DELETE, box), work, bindir)
    assert out.count('"ok":true') == 3
    left = box.jobs()
    assert [j["AETitleCaller"] for j in left] == ["MySelf"]
    for job in left:
        assert (box.home / "scratch" / job["scratchdir"]).is_dir()
