"""Writes the seed corpora of the fuzz targets into fuzz/corpus/TARGET/ from the case
files, the sample export stream and the shipped rules. Existing corpus files are kept,
so that what a longer run found is not thrown away."""

import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    messages = []
    for path in sorted((ROOT / "tests" / "cases").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                case = json.loads(line)
                messages.append((case.get("unit", ""), case["message"]))
    for unit, message in messages:
        record = json.dumps({"_SYSTEMD_UNIT": unit, "MESSAGE": message}).encode()
        for target in ("json_scan", "record", "mask", "differential"):
            put(target, record)
        put("header", message.encode())
    export = (ROOT / "examples" / "node.export").read_bytes()
    put("export", export)
    for entry in export.split(b"\n\n"):
        put("export", entry + b"\n\n")
    for path in sorted((ROOT / "rules").glob("*.toml")):
        put("rules", path.read_bytes())


main()
