#!/usr/bin/env python3
"""Where Postgres spends its CPU in a benchmark run: per statement, daemon against floor.

Reads the log written by `BENCH_PGLOG=<file> cargo bench --bench fleet` (log_statement_stats,
connection logging, autovacuum logging) and prints, for each tool's tenant databases (named
b<size><app><letter><N>: d the daemon, f the psql floor, a Alembic in-process, c the fleetmig
CLI loop, l the Alembic CLI loop): sessions, mean CPU per session, the split of each session's
statements into bookkeeping and the revisions' own (by direction: a session that drops a table
is a downgrade), and the statements that used the most CPU (literals and numbers folded, first
70 characters). Usage:

    python3 benches/pg_statement_cpu.py /tmp/pg.log [top]
"""

import collections
import re
import sys

LINE = re.compile(r"\S+ \S+ \S+ \[(\d+)\] (\w+):\s+(.*)")
STMT_CPU = re.compile(r"!\s+([\d.]+) s user, ([\d.]+) s system, [\d.]+ s elapsed")
TOTAL_CPU = re.compile(r"\[([\d.]+) s user, ([\d.]+) s system total\]")
AUTOVACUUM_CPU = re.compile(r"system usage: CPU: user: ([\d.]+) s, system: ([\d.]+) s")
# Statements that are not a revision's own, on any side: session settings and locks,
# transaction control, the version table, history and fence (created if missing, schema
# qualified or not), index validity, fleetmig's set_config marks and its lock release; and Alembic's
# (SQLAlchemy's dialect start-up queries, its version table checks and updates).
BOOKKEEPING = re.compile(
    r"(SET|RESET|BEGIN|START TRANSACTION|COMMIT|DISCARD ALL|WITH f AS|SELECT 'version'|SELECT i\.indisvalid"
    r"|SELECT current_user|SELECT FROM pg_catalog\.set_config|SELECT CASE WHEN pg_catalog\.current_setting"
    r"|CREATE SCHEMA IF NOT EXISTS"
    r"|CREATE TABLE IF NOT EXISTS (\"public\"\.)?\"(alembic_version|fleetmig_history|fleetmig_fence)\""
    r"|(INSERT INTO|DELETE FROM|UPDATE) (\"public\"\.)?\"?(alembic_version|fleetmig_history)\"?"
    r"|SELECT alembic_version\.|CREATE TABLE alembic_version|select pg_catalog\.version\(\)"
    r"|select current_schema\(\)|show standard_conforming_strings|SELECT pg_catalog\.pg_class\.relname"
    r"|SELECT t\.oid, typarray)",
    re.IGNORECASE,
)
SIDES = {"d": "daemon", "f": "floor", "a": "alembic", "c": "fm-cli", "l": "al-cli"}


def side(database):
    m = re.search(r"([dfacl])\d+$", database or "")
    return SIDES[m.group(1)] if m else "other"


def main(path, top):
    database, session_total, pending = {}, {}, {}
    statements = collections.defaultdict(list)
    cpu = collections.defaultdict(lambda: collections.defaultdict(float))
    count = collections.defaultdict(lambda: collections.defaultdict(int))
    autovacuum, checkpoints, last_pid, in_autovacuum = 0.0, 0, None, False
    with open(path, errors="replace") as log:
        for line in log:
            m = LINE.match(line)
            if m:
                pid, level, msg = m.groups()
                last_pid = pid
                in_autovacuum = msg.startswith(("automatic vacuum", "automatic analyze"))
                checkpoints += msg.startswith("checkpoint complete")
                c = re.match(r"connection authorized: user=\S+ database=(\S+)", msg)
                if c:
                    database[pid] = c.group(1)
                if level == "STATEMENT" and pid in pending:
                    key = re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'?'", msg[:70]))
                    s = side(database.get(pid))
                    spent = pending.pop(pid)
                    cpu[s][key] += spent
                    count[s][key] += 1
                    statements[pid].append((msg.lstrip(), spent))
                continue
            m = STMT_CPU.search(line)
            if m and last_pid:
                pending[last_pid] = float(m.group(1)) + float(m.group(2))
            m = TOTAL_CPU.search(line)
            if m and last_pid:
                session_total[last_pid] = float(m.group(1)) + float(m.group(2))
            m = AUTOVACUUM_CPU.search(line)
            if m and in_autovacuum:
                autovacuum += float(m.group(1)) + float(m.group(2))
    sessions = collections.defaultdict(list)
    for pid, total in session_total.items():
        sessions[side(database.get(pid))].append(total)
    print(f"autovacuum CPU {autovacuum * 1000:.0f} ms, {checkpoints} checkpoints")
    print("\nper session, ms: bookkeeping + revisions' statements (session total)")
    split = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for pid, done in statements.items():
        s = side(database.get(pid))
        if s == "other":
            continue
        down = any(m.startswith("DROP TABLE") for m, _ in done)
        book = sum(c for m, c in done if BOOKKEEPING.match(m))
        row = split[(s, "down" if down else "up")]
        row[0] += 1
        row[1] += book
        row[2] += sum(c for _, c in done) - book
        row[3] += session_total.get(pid, 0.0)
    for (s, direction), (n, book, rest, total) in sorted(split.items()):
        print(f"  {s:7} {direction:4} {n:5} sessions: {book / n * 1000:5.1f} + {rest / n * 1000:5.1f} "
              f"({total / n * 1000:.1f})")
    for s in SIDES.values():
        totals = sessions[s]
        if not totals:
            continue
        mean = sum(totals) / len(totals) * 1000
        statements = sorted(cpu[s].items(), key=lambda kv: -kv[1])
        print(f"\n{s}: {len(totals)} sessions, {mean:.1f} ms CPU per session "
              f"({sum(cpu[s].values()) * 1000:.0f} ms in statements)")
        print("  total ms  count  mean ms  statement")
        for key, total in statements[:top]:
            n = count[s][key]
            print(f"  {total * 1000:8.0f} {n:6d} {total * 1000 / n:8.2f}  {key}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or (len(sys.argv) > 2 and not sys.argv[2].isdigit()):
        sys.exit(__doc__)
    try:
        main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        sys.exit(f"{sys.argv[1]}: {e.strerror}. Write the log first: BENCH_PGLOG={sys.argv[1]} cargo bench --bench fleet")
