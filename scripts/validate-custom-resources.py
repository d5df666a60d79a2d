#!/usr/bin/env python3
"""Validates openledger.io custom resources against the openAPIV3Schema of the CRDs in
charts/openledger/crds, offline, the way the API server would with kubectl's strict field
validation: types, required fields, enums, patterns, ranges, lengths, and no unknown fields.

    validate-custom-resources.py --crds DIR [--expect-invalid] FILE...

Each FILE may hold several YAML documents; documents of other API groups are skipped. With
--expect-invalid every custom resource must be refused (and the reason is printed).
CEL rules (x-kubernetes-validations) cannot be evaluated offline: they are counted, not run.
Exit status 0 when every resource meets the expectation, 1 otherwise, 2 on bad input."""

import argparse
import copy
import glob
import os
import re
import sys

import jsonschema
import yaml

GROUP = "openledger.io"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def to_json_schema(node, counts):
    """An OpenAPI v3 structural schema as JSON Schema: `nullable` becomes a null type,
    `x-kubernetes-int-or-string` an integer-or-string, objects without
    `x-kubernetes-preserve-unknown-fields` refuse unknown fields, CEL rules are counted."""
    if isinstance(node, list):
        return [to_json_schema(item, counts) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: to_json_schema(value, counts) for key, value in node.items()}
    rules = node.pop("x-kubernetes-validations", [])
    counts["cel"] += len(rules)
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    for key in [key for key in node if key.startswith("x-kubernetes-")]:
        node.pop(key)  # list/map types and embedded resources change merging, not validity
    if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node and not preserve:
        node["additionalProperties"] = False
    if node.pop("nullable", False):
        if "type" in node:
            node["type"] = [node["type"], "null"]
        elif "anyOf" in node:
            node["anyOf"].append({"type": "null"})
    return node


def load_crds(directory):
    """(apiVersion, kind) -> (JSON schema, number of CEL rules) of every served version."""
    schemas = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as file:
            crd = yaml.safe_load(file)
        spec = crd["spec"]
        for version in spec["versions"]:
            counts = {"cel": 0}
            schema = to_json_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]), counts)
            # The CRD schema leaves the envelope to the API server: describe it here.
            schema.setdefault("properties", {}).update(
                {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
            )
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = (schema, counts["cel"])
    if not schemas:
        sys.exit(f"error: no CRDs in {directory}: run `openledger operator crdgen`")
    return schemas


def problems(resource, schemas):
    """Why the API server would refuse `resource`, or an empty list."""
    key = (resource.get("apiVersion"), resource.get("kind"))
    if key not in schemas:
        return [f"no CRD serves {key[1]} in {key[0]}"], 0
    schema, cel = schemas[key]
    validator = jsonschema.Draft7Validator(schema)
    found = [
        f"{'.'.join(str(part) for part in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(resource), key=lambda error: list(error.absolute_path))
    ]
    name = (resource.get("metadata") or {}).get("name", "")
    if not NAME.match(str(name)) or len(str(name)) > 253:
        found.append(f"metadata.name: {name!r} is not a DNS subdomain name")
    return found, cel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", required=True)
    parser.add_argument("--expect-invalid", action="store_true")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    schemas = load_crds(args.crds)
    checked = failed = cel_total = 0
    for path in args.files:
        try:
            with open(path) as file:
                documents = [doc for doc in yaml.safe_load_all(file) if doc]
        except (OSError, yaml.YAMLError) as error:
            print(f"error: cannot read {path}: {error}", file=sys.stderr)
            return 2
        for resource in documents:
            if not str(resource.get("apiVersion", "")).startswith(GROUP + "/"):
                continue
            checked += 1
            label = f"{path}: {resource.get('kind')}/{(resource.get('metadata') or {}).get('name')}"
            found, cel = problems(resource, schemas)
            cel_total += cel
            if args.expect_invalid:
                if found:
                    print(f"  refused as expected  {label}")
                    for problem in found:
                        print(f"      {problem}")
                else:
                    failed += 1
                    print(f"  FAIL: accepted       {label} (it should be refused)")
            elif found:
                failed += 1
                print(f"  FAIL: invalid        {label}")
                for problem in found:
                    print(f"      {problem}")
            else:
                print(f"  valid                {label}")
    if checked == 0:
        print(f"error: no {GROUP} resources in {' '.join(args.files)}", file=sys.stderr)
        return 2
    print(
        f"  {checked} custom resources checked, {failed} not as expected; {cel_total} CEL rule checks skipped "
        "(CEL needs an API server: e2e/cluster.sh runs them)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
