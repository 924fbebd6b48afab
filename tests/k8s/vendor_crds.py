"""Refresh the vendored KubeRay CRD schemas: ``python tests/k8s/vendor_crds.py KUBERAY_DIR TAG``.

KUBERAY_DIR is a git checkout of github.com/ray-project/kuberay (Apache-2.0). For each of
RayCluster, RayJob and RayService this keeps the ``v1`` version's ``openAPIV3Schema`` from
``ray-operator/config/crd/bases/ray.io_<plural>.yaml`` at TAG, as gzipped JSON (the YAML
is 3.3 MB and slow to parse), with the tag and commit it came from.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
OUT = Path(__file__).with_name("crds")


def main(repo: str, tag: str) -> None:
    commit = subprocess.check_output(["git", "-C", repo, "rev-list", "-n1", tag], text=True)
    for kind, plural in PLURALS.items():
        path = f"ray-operator/config/crd/bases/ray.io_{plural}.yaml"
        text = subprocess.check_output(["git", "-C", repo, "show", f"{tag}:{path}"], text=True)
        crd = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["spec"]["names"]["kind"] == kind, path
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        doc = {
            "source": f"https://github.com/ray-project/kuberay/blob/{tag}/{path}",
            "commit": commit.strip(),
            "kind": kind,
            "openAPIV3Schema": v1["schema"]["openAPIV3Schema"],
        }
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        # mtime=0: the same input gives the same bytes
        (OUT / f"{plural}.json.gz").write_bytes(gzip.compress(data, mtime=0))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
