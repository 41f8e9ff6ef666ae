#!/usr/bin/env python3
"""Break the abathur stand-in the way the runbook's triggers describe, for
`rewind drill` (the [[drill]] scenarios of examples/abathur/rewind.toml).
Only python3's own sqlite3, gzip and file calls; it touches nothing but the
files it is given.

    inject.py backup --db DB --backups DIR
        The runbook's daily abathur-backup.sh: PRAGMA wal_checkpoint(TRUNCATE),
        an online backup to DIR/abathur_<YYYY-MM-DD_HH-MM-SS>.db, gzip, then
        PRAGMA integrity_check on the decompressed copy. Prints the .gz.
    inject.py drop-table --db DB TABLE
        "Data integrity failure": a core table is lost (foreign keys off, as
        a bad migration would run it).
    inject.py corrupt-pages --db DB [--pages N]
        "Database corruption": after a checkpoint, N (default 2) pages in
        the middle of the file (never the header page) are overwritten.
"""
import argparse, gzip, os, shutil, sqlite3, sys, tempfile, time

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
b = sub.add_parser("backup")
b.add_argument("--db", required=True)
b.add_argument("--backups", required=True)
d = sub.add_parser("drop-table")
d.add_argument("--db", required=True)
d.add_argument("table")
c = sub.add_parser("corrupt-pages")
c.add_argument("--db", required=True)
c.add_argument("--pages", type=int, default=2)
a = p.parse_args()

if not os.path.isfile(a.db):
    sys.exit("no database at %s" % a.db)


def connect():
    return sqlite3.connect(a.db, timeout=10, isolation_level=None)


def checkpoint():
    conn = connect()
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


if a.cmd == "backup":
    checkpoint()
    os.makedirs(a.backups, exist_ok=True)
    name = "abathur_%s.db" % time.strftime("%Y-%m-%d_%H-%M-%S")
    copy = os.path.join(a.backups, name)
    src, dst = connect(), sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    with open(copy, "rb") as f, gzip.open(copy + ".gz", "wb") as g:
        shutil.copyfileobj(f, g)
    os.remove(copy)
    with tempfile.TemporaryDirectory() as tmp:
        check = os.path.join(tmp, "verify.db")
        with gzip.open(copy + ".gz", "rb") as g, open(check, "wb") as f:
            shutil.copyfileobj(g, f)
        conn = sqlite3.connect(check)
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
    if ok != "ok":
        os.remove(copy + ".gz")
        sys.exit("ERROR: Backup integrity check failed: %s" % ok)
    print(copy + ".gz")
elif a.cmd == "drop-table":
    conn = connect()
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute('DROP TABLE "%s"' % a.table.replace('"', '""'))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()
    print("dropped %s" % a.table)
elif a.cmd == "corrupt-pages":
    checkpoint()
    conn = connect()
    try:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    pages = os.path.getsize(a.db) // size
    first = pages // 2
    if first < 1 or first + a.pages > pages:
        sys.exit("the database has %d pages; cannot overwrite %d in the middle" % (pages, a.pages))
    with open(a.db, "r+b") as f:
        for n in range(first, first + a.pages):
            f.seek(n * size)
            f.write(b"\xa5" * size)
        f.flush()
        os.fsync(f.fileno())
    print("overwrote pages %d-%d of %d" % (first + 1, first + a.pages, pages))
