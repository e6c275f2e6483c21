"""What the sweep scripts share: progress (tqdm when installed, plain lines otherwise) and CSV output."""
import csv
import os
import sys


def make_progress(total, enabled, name):
    """(update(description), close()) through tqdm, or plain lines on stderr where tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
        if enabled:
            print("tqdm not installed (pip install tqdm): progress as plain lines", file=sys.stderr)
    if tqdm is None or not enabled:
        count = [0]

        def update(description):
            count[0] += 1
            if enabled:
                print(f"[{count[0]}/{total}] {description}", file=sys.stderr, flush=True)
        return update, lambda: None
    bar = tqdm(total=total, unit="point", desc=name, file=sys.stderr)
    started = [False]

    def update(description):
        if started[0]:
            bar.update(1)
        started[0] = True
        bar.set_postfix_str(description)
    return update, lambda: (bar.update(1), bar.close())


def write_csv(path, rows, fields=None):
    """rows (dicts) to a CSV at path (directories made); columns: ``fields``, or every key in first-seen order."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    keys = list(fields) if fields is not None else list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")
