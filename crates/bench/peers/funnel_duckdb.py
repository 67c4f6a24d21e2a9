"""The peer of `chronicle-bench funnel`: the same 4-step funnel run by DuckDB (PyPI) over the
same events, loaded in memory first (loading is not timed). Prints one JSON line.

Usage: funnel_duckdb.py EVENTS.csv PLANS.csv AS_OF_MICROS STEP1 STEP2 STEP3 STEP4

EVENTS.csv: person,name,t (microseconds since the epoch); PLANS.csv: person,plan,t. Semantics as
Chronicle's `ordered` funnel with a 7-day window: entry at a person's first step-1 event, each next
step the first matching event after the previous one, within 7 days of the entry; the breakdown
uses the plan the person had at the entry (an ASOF join on the plan's history).
"""
import json, statistics, sys, time
import duckdb

events, plans, as_of = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = sys.argv[4:8]
con = duckdb.connect()
con.execute(f"CREATE TABLE e AS SELECT person, name, make_timestamp(t) AS t FROM read_csv('{events}', header=true, columns={{'person': 'VARCHAR', 'name': 'VARCHAR', 't': 'BIGINT'}})")
con.execute(f"CREATE TABLE p AS SELECT person, plan, make_timestamp(t) AS t FROM read_csv('{plans}', header=true, columns={{'person': 'VARCHAR', 'plan': 'VARCHAR', 't': 'BIGINT'}})")


def funnel(cutoff):
    where = "" if cutoff is None else f"WHERE t <= make_timestamp({cutoff})"
    return f"""
WITH ev AS (SELECT * FROM e {where}),
s1 AS (SELECT person, min(t) AS t1 FROM ev WHERE name = $1 GROUP BY person),
s2 AS (SELECT s1.person, s1.t1, min(ev.t) AS t2 FROM s1 JOIN ev ON ev.person = s1.person AND ev.name = $2
       AND ev.t > s1.t1 AND ev.t <= s1.t1 + INTERVAL 7 DAY GROUP BY ALL),
s3 AS (SELECT s2.person, s2.t1, min(ev.t) AS t3 FROM s2 JOIN ev ON ev.person = s2.person AND ev.name = $3
       AND ev.t > s2.t2 AND ev.t <= s2.t1 + INTERVAL 7 DAY GROUP BY ALL),
s4 AS (SELECT s3.person, min(ev.t) AS t4 FROM s3 JOIN ev ON ev.person = s3.person AND ev.name = $4
       AND ev.t > s3.t3 AND ev.t <= s3.t1 + INTERVAL 7 DAY GROUP BY ALL)
SELECT s1.person, s1.t1, s2.t2, s3.t3, s4.t4 FROM s1 LEFT JOIN s2 USING (person) LEFT JOIN s3 USING (person) LEFT JOIN s4 USING (person)
"""


plain_sql = f"SELECT count(t1), count(t2), count(t3), count(t4) FROM ({funnel(None)})"
split_sql = f"""
SELECT coalesce(p.plan, '(none)'), count(f.t1), count(f.t2), count(f.t3), count(f.t4)
FROM ({funnel(as_of)}) f ASOF LEFT JOIN (SELECT * FROM p WHERE t <= make_timestamp({as_of})) p
ON f.person = p.person AND f.t1 >= p.t GROUP BY ALL ORDER BY 1
"""


def timed(sql):
    lat, out = [], None
    for _ in range(5):
        t = time.perf_counter()
        out = con.execute(sql, steps).fetchall()
        lat.append((time.perf_counter() - t) * 1e6)
    return {"p50_us": statistics.median(lat), "max_us": max(lat)}, out


plain, plain_rows = timed(plain_sql)
split, split_rows = timed(split_sql)
print(json.dumps({"peer": "duckdb " + duckdb.__version__, "events": con.execute("SELECT count(*) FROM e").fetchone()[0],
                  "plain": plain, "plain_counts": list(plain_rows[0]),
                  "breakdown_as_of": split, "breakdown_as_of_counts": {r[0]: list(r[1:]) for r in split_rows}}))
