"""Rebuild ``official_manifests.json``: a digest of every official state-dict manifest.

For each manifest (``refdata/manifests/*.json``, made from the official code) we keep the parameter count, the
number of entries and a sha256 over the ordered ``key shape dtype`` lines, so the tests check the exact layout
without carrying the 1.6 MB of manifests. v1 derived buffers are digested separately.

Usage: python tests/data/make_manifest_digests.py /path/to/shared/refdata/manifests
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

V1_BUFFERS = ("attn.biases", "attn.relative_position_index")


def digest(entries: list[tuple[str, list[int], str]]) -> str:
    text = "\n".join(f"{k} {'x'.join(map(str, s))} {d}" for k, s, d in entries)
    return hashlib.sha256(text.encode()).hexdigest()


def main(src: Path) -> None:
    out = {}
    for path in sorted(src.glob("*.json")):
        m = json.loads(path.read_text())
        entries = [(k, v["shape"], v["dtype"].replace("torch.", "")) for k, v in m["state_dict"].items()]
        main_entries = [e for e in entries if not e[0].endswith(V1_BUFFERS)]
        out[m["name"]] = {
            "kind": m["kind"],
            "num_params": m["num_params"],
            "num_entries": len(main_entries),
            "num_v1_buffers": len(entries) - len(main_entries),
            "sha256": digest(main_entries),
            "configs": m.get("configs", m.get("config_file")),
        }
    (Path(__file__).parent / "official_manifests.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/refdata/manifests"))
