# parse_ts.py - summarise decode_probe_ts.py output (the ts plugin's per-CTA lines): per setting,
# the span of the step, the CTAs' start skew and, per phase, the median and max clock64 cycles
# from CTA entry. Usage: python3 parse_ts.py ts.log
import sys, statistics as st, collections
cur = None; data = collections.defaultdict(list)
for line in open(sys.argv[1]):
    w = line.split()
    if not w: continue
    if w[0] == "CFG": cur = (w[1], int(w[2])); continue
    if w[0] == "TS" and cur: data[cur].append([int(x) for x in w[1:]])
names = ["setup", "issued", "waited", "bar", "phiS", "logits", "lbar", "numer", "end"]
for key, rows in data.items():
    g0 = [r[2] for r in rows]; g1 = [r[3] for r in rows]
    span = max(g1) - min(g0)
    med = [st.median(r[4 + i] for r in rows) for i in range(9)]
    mx = [max(r[4 + i] for r in rows) for i in range(9)]
    print(f"{key[0]:22} rep{key[1]} ctas {len(rows)} span {span} ns, start skew {max(g0)-min(g0)} ns, "
          f"cta dur med {st.median(b-a for a,b in zip(g0,g1))} max {max(b-a for a,b in zip(g0,g1))} ns")
    print("   cycles from entry (median/max): " + "  ".join(f"{n}={m:.0f}/{x}" for n, m, x in zip(names, med, mx)))
