#!/usr/bin/env python3
"""Where Postgres spends its CPU in a benchmark run: per statement, daemon against floor.

Reads the log written by `BENCH_PGLOG=<file> cargo bench --bench fleet` (log_statement_stats,
connection logging, autovacuum logging) and prints, for the daemon's tenant databases (names
ending in d<N>) and the floor's (f<N>): sessions, mean CPU per session, and the statements
that used the most CPU (literals and numbers folded, first 70 characters). Usage:

    python3 benches/pg_statement_cpu.py /tmp/pg.log [top]
"""

import collections
import re
import sys

LINE = re.compile(r"\S+ \S+ \S+ \[(\d+)\] (\w+):\s+(.*)")
STMT_CPU = re.compile(r"!\s+([\d.]+) s user, ([\d.]+) s system, [\d.]+ s elapsed")
TOTAL_CPU = re.compile(r"\[([\d.]+) s user, ([\d.]+) s system total\]")
AUTOVACUUM_CPU = re.compile(r"system usage: CPU: user: ([\d.]+) s, system: ([\d.]+) s")


def side(database):
    if re.search(r"d\d+$", database or ""):
        return "daemon"
    if re.search(r"f\d+$", database or ""):
        return "floor"
    return "other"


def main(path, top):
    database, session_total, pending = {}, {}, {}
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
                    cpu[s][key] += pending.pop(pid)
                    count[s][key] += 1
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
    for s in ("daemon", "floor"):
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
    except OSError as e:
        sys.exit(f"{sys.argv[1]}: {e.strerror}. Write the log first: BENCH_PGLOG={sys.argv[1]} cargo bench --bench fleet")
