"""A real Orthanc PACS (with its DICOMweb plugin) for tests: free loopback ports, authentication
on, its own JSON configuration and storage in a temporary folder, stopped at the end.

    from orthanc import orthanc   # the session fixture; pytest picks it up in the importing module

Skips (with the command that installs it) only when Orthanc is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "scalpel-test", "not-a-real-secret-9f2c"
MOVE_AET = "SCALPELMOVE"  # the C-MOVE destination Orthanc knows (DicomModalities)
GET_AET = "SCALPELGET"  # the only caller allowed C-GET: any other AE title is refused and must fall back to C-MOVE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    root: str  # http://127.0.0.1:PORT
    dicom_port: int
    aet: str
    move_port: int  # where Orthanc sends C-MOVE results for MOVE_AET
    folder: Path
    process: subprocess.Popen

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def rest(self) -> requests.Session:
        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return session

    def upload(self, paths) -> None:
        """Store files through Orthanc's own REST API (not the code under test)."""
        with self.rest() as session:
            for path in paths:
                answer = session.post(f"{self.root}/instances", data=Path(path).read_bytes(), timeout=30)
                answer.raise_for_status()

    def delete_instance(self, sop_uid: str) -> None:
        with self.rest() as session:
            found = session.post(f"{self.root}/tools/lookup", data=sop_uid, timeout=30).json()
            for item in found:
                session.delete(f"{self.root}/instances/{item['ID']}", timeout=30).raise_for_status()


def start_orthanc(folder: Path) -> OrthancServer:
    http_port, dicom_port, move_port = free_port(), free_port(), free_port()
    config = {
        "Name": "scalpel-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": True, "DicomCheckCalledAet": False,
        "DicomModalities": {"scalpel": [MOVE_AET, "127.0.0.1", move_port],
                            "getter": {"AET": GET_AET, "Host": "127.0.0.1", "Port": move_port, "AllowGet": True}},
        "HttpCompressionEnabled": False, "StorageCompression": False, "ConcurrentJobs": 2,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log = (folder / "orthanc.log").open("wb")
    process = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                               cwd=folder, start_new_session=True)
    server = OrthancServer(f"http://127.0.0.1:{http_port}", dicom_port, "ORTHANC", move_port, folder, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited at start:\n{(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            if requests.get(f"{server.root}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return server
        except requests.ConnectionError:
            time.sleep(0.05)
    stop_orthanc(server)
    raise RuntimeError(f"Orthanc did not answer within 30 s:\n{(folder / 'orthanc.log').read_text()[-2000:]}")


def stop_orthanc(server: OrthancServer) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=1)  # its storage is thrown away: no need to wait for a clean exit
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture(scope="session")
def orthanc():
    if not (ORTHANC.is_file() and DICOMWEB_PLUGIN.exists()):
        pytest.skip("Orthanc with its DICOMweb plugin is not installed: run 'sudo make servers'")
    folder = Path(tempfile.mkdtemp(prefix="scalpel-orthanc-"))
    server = start_orthanc(folder)
    try:
        yield server
    finally:
        stop_orthanc(server)
        shutil.rmtree(folder, ignore_errors=True)
