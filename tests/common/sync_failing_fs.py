"""A FUSE filesystem passing every call through to a directory, except that fsync and
fdatasync fail with EIO while a flag file exists: a disk that takes writes into the page
cache and cannot store them. As Linux does on a failed writeback, a failed sync drops
what was written since the last sync that succeeded: the bytes become zeros in the
backing file, which a process sees once the filesystem is mounted again (the kernel's
cache of the old mount still holds them). Used by tests/disk.rs
(common/failing_disk.rs).

usage: sync_failing_fs.py BACKING_DIR MOUNT_POINT FLAG_FILE
"""

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations

STAT_FIELDS = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")
STATVFS_FIELDS = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                  "f_flag", "f_frsize", "f_namemax")


class SyncFailing(Operations):
    def __init__(self, backing, flag):
        self.backing = backing
        self.flag = flag
        # Per file: (offset, length) of each write since its last sync that succeeded.
        self.unsynced = {}

    def real(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def check_sync(self, path):
        written = self.unsynced.pop(path, [])
        if not os.path.exists(self.flag):
            return
        fd = os.open(self.real(path), os.O_WRONLY)
        try:
            for offset, length in written:
                os.pwrite(fd, bytes(length), offset)
        finally:
            os.close(fd)
        raise FuseOSError(errno.EIO)

    def getattr(self, path, fh=None):
        st = os.lstat(self.real(path))
        return {name: getattr(st, name) for name in STAT_FIELDS}

    def statfs(self, path):
        st = os.statvfs(self.real(path))
        return {name: getattr(st, name) for name in STATVFS_FIELDS}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self.real(path))

    def mkdir(self, path, mode):
        os.mkdir(self.real(path), mode)

    def rmdir(self, path):
        os.rmdir(self.real(path))

    def unlink(self, path):
        os.unlink(self.real(path))

    def rename(self, old, new):
        os.rename(self.real(old), self.real(new))

    def truncate(self, path, length, fh=None):
        os.truncate(self.real(path), length)

    def open(self, path, flags):
        return os.open(self.real(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self.real(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self.unsynced.setdefault(path, []).append((offset, len(data)))
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)

    def fsync(self, path, datasync, fh):
        self.check_sync(path)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def fsyncdir(self, path, datasync, fh):
        self.check_sync(path)


if __name__ == "__main__":
    backing, mount_point, flag = sys.argv[1:4]
    FUSE(SyncFailing(backing, flag), mount_point, foreground=True, nothreads=True)
