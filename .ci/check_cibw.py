"""Check the release workflow without running it (it needs GitHub's runners
and the manylinux/musllinux images): .github/workflows/wheels.yml parses,
it pins the cibuildwheel this runs with, and for each job of its wheels
matrix `cibuildwheel --print-build-identifiers --platform linux`, given
that job's environment and pyproject's [tool.cibuildwheel], lists exactly
CPython 3.9-3.14, 3.13t and 3.14t for that job's libc and architecture:
32 identifiers in all, none twice. The files pyproject's commands run
({project}/...) must exist.

    python check_cibw.py   (from the repository root, with cibuildwheel
                            and PyYAML installed)
"""

import os
import re
import subprocess
import sys

import cibuildwheel
import yaml

PYTHONS = ["cp39", "cp310", "cp311", "cp312", "cp313", "cp314",
           "cp313t", "cp314t"]
WORKFLOW = ".github/workflows/wheels.yml"


def main():
    with open(WORKFLOW) as f:
        workflow = yaml.safe_load(f)
    job = workflow["jobs"]["wheels"]
    step = next(s for s in job["steps"]
                if s.get("uses", "").startswith("pypa/cibuildwheel@"))
    pinned = step["uses"].split("@v", 1)[1]
    assert pinned == cibuildwheel.__version__, (
        "the workflow pins cibuildwheel %s, this is %s"
        % (pinned, cibuildwheel.__version__))

    with open("pyproject.toml") as f:
        for path in re.findall(r"\{project\}/([^\s\"']+)", f.read()):
            assert os.path.isfile(path), "pyproject runs a missing " + path

    base = {k: v for k, v in os.environ.items()
            if not k.startswith("CIBW_")}
    seen = []
    for entry in job["strategy"]["matrix"]["include"]:
        env = dict(base)
        for key, value in step.get("env", {}).items():
            env[key] = re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}",
                              lambda m: str(entry[m.group(1)]), str(value))
        out = subprocess.run(
            [sys.executable, "-m", "cibuildwheel",
             "--print-build-identifiers", "--platform", "linux", "."],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=120)
        assert out.returncode == 0, out.stderr
        ids = out.stdout.split()
        want = ["%s-%s_%s" % (py, entry["libc"], entry["arch"])
                for py in PYTHONS]
        assert sorted(ids) == sorted(want), (entry, ids)
        print("%s %s: %s" % (entry["libc"], entry["arch"], " ".join(ids)))
        seen += ids
    assert len(seen) == len(set(seen)) == 32, seen
    print("check_cibw: cibuildwheel %s, %d identifiers in %d jobs, "
          "as expected" % (pinned, len(seen),
                           len(job["strategy"]["matrix"]["include"])))


if __name__ == "__main__":
    main()
