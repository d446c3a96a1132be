#!/usr/bin/env python3
"""Three ways to store a 10 KiB message durably, timed side by side
(docs/spool.md, "Written in place"):

  rename   write tmp/ID, fsync, rename to msg/ID, fsync msg/  (before issue 13)
  inplace  create msg/ID, write, fsync, fsync msg/ (held open)  (shipped)
  tmpfile  O_TMPFILE in msg/, write, fsync, linkat msg/ID, fsync msg/

Usage: scripts/spool-writes.py MODE COUNT THREADS [ROOT]
  ROOT (default /tmp/spool-writes) gets a fresh folder per mode, removed
  first. For ext4 with a journal on a loop device (as root):
    truncate -s 2G /tmp/j.img && mkfs.ext4 -q -F /tmp/j.img
    mkdir -p /mnt/j && mount -o loop /tmp/j.img /mnt/j
    scripts/spool-writes.py inplace 4000 16 /mnt/j
Prints stores a second and the process's CPU (user + system) per store.
Bounded by COUNT; touches nothing outside ROOT.
"""
import os
import resource
import shutil
import sys
import threading
import time

mode, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
root = os.path.join(sys.argv[4] if len(sys.argv) > 4 else "/tmp/spool-writes", "q-" + mode)
shutil.rmtree(root, ignore_errors=True)
for d in ("tmp", "msg"):
    os.makedirs(os.path.join(root, d))
data = b"x" * 10240
msg_fd = os.open(os.path.join(root, "msg"), os.O_RDONLY | os.O_DIRECTORY)


def store(i):
    name = f"{i:08d}"
    if mode == "rename":
        tmp = os.path.join(root, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.path.exists(os.path.join(root, "msg", name))
        os.rename(tmp, os.path.join(root, "msg", name))
        d = os.open(os.path.join(root, "msg"), os.O_RDONLY)
        os.fsync(d)
        os.close(d)
    elif mode == "inplace":
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=msg_fd)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.fsync(msg_fd)
    elif mode == "tmpfile":
        fd = os.open(os.path.join(root, "msg"), os.O_WRONLY | os.O_TMPFILE, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=msg_fd, follow_symlinks=True)
        os.close(fd)
        os.fsync(msg_fd)
    else:
        sys.exit(f"unknown mode {mode!r}: rename, inplace or tmpfile")


def worker(first):
    for i in range(first, count, threads):
        store(i)


start, before = time.time(), resource.getrusage(resource.RUSAGE_SELF)
workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
elapsed, after = time.time() - start, resource.getrusage(resource.RUSAGE_SELF)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
print(f"{mode} c={threads}: {count / elapsed:.0f}/s, cpu/store {cpu / count * 1e6:.0f} us")
shutil.rmtree(root, ignore_errors=True)
