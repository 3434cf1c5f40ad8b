"""What the benchmark scripts share: the helper that runs one job and measures it."""

# Runs one job and reports it. A fresh, small helper per job matters: RUSAGE_CHILDREN's
# ru_maxrss is the peak of the largest waited-for descendant, and it is sticky for the life of
# the waiting process, so measuring from the benchmark process itself would let an earlier
# (bigger) job leak into a later job's number. Time is taken around the child only (the
# helper's own start-up is excluded), then again after os.sync() so jobs that fsync (surgeon)
# and jobs that leave dirty pages behind (cp, mergekit) can be compared on durable output too.
RSS_HELPER = r"""
import json, os, resource, subprocess, sys, time
result, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log, "wb") as fh:
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    t1 = time.perf_counter()
os.sync()
t2 = time.perf_counter()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
with open(result, "w") as fh:
    json.dump({"rc": rc, "wall_s": t1 - t0, "durable_s": t2 - t0, "peak_rss": ru.ru_maxrss * unit,
               "cpu_s": ru.ru_utime + ru.ru_stime}, fh)
"""
