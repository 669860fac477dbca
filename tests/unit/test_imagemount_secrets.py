"""scrub_environment wipes a password from the environment block /proc/<pid>/environ shows, in
this process and in a child forked after it (as the `stargz mount` daemon is)."""

from __future__ import annotations

import os
import subprocess
import sys

SECRET = "pw-wiped-from-the-block-7d1"
PROGRAM = """
import os, sys
from stargz.imagemount.secrets import scrub_environment
scrub_environment()
wait, release = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(release)
    os.read(wait, 1)  # until the parent has read our environ
    os._exit(0)
child = open(f"/proc/{pid}/environ", "rb").read()
own = open("/proc/self/environ", "rb").read()
os.close(release)
os.waitpid(pid, 0)
sys.stdout.buffer.write(own + b"\\n--\\n" + child)
print("\\n", "STARGZ_PASSWORD" in os.environ)
"""


def test_the_password_leaves_the_environment_block_of_process_and_child() -> None:
    env = {**os.environ, "STARGZ_PASSWORD": SECRET, "STARGZ_KEEP": "kept"}
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                          timeout=60, check=True)
    own, child = done.stdout.rsplit(b"\n", 2)[0].split(b"\n--\n")
    for block in (own, child):
        assert SECRET.encode() not in block and b"STARGZ_PASSWORD=" not in block
        assert b"STARGZ_KEEP=kept" in block  # the rest of the block is intact
    assert done.stdout.strip().endswith(b"False")  # gone from os.environ too
