"""Imports the benchmark's PEFT adapters into a running `openledger dev` through POST /v1/adapters.

Each import is signed by the development account's key (<data_dir>/dev-account.key, a hex ed25519
secret) over the canonical message of `openledger_signing::adapter_import_message`; the account id
is derived from the key as `openledger_inference_gateway::openlora::keys::dev::dev_account_id`
does. Writes the registered model names, one a line, for drive.py --adapter-names.

  register.py --base-url http://127.0.0.1:8092 --data-dir DIR --adapters DIR/peft --count 100 --out names.txt
"""

import argparse
import pathlib
import sys
import time
import urllib.request
import uuid

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

FIRST_CLIENT_ACCOUNT_ID = 65536


def dev_account(data_dir):
    secret = bytes.fromhex((pathlib.Path(data_dir) / "dev-account.key").read_text().strip())
    key = Ed25519PrivateKey.from_private_bytes(secret)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    digest = blake3.blake3(b"openledger/dev-account/v1/" + public).digest()
    return key, public, max(int.from_bytes(digest[:16], "big"), FIRST_CLIENT_ACCOUNT_ID)


def multipart(fields, files):
    boundary = uuid.uuid4().hex
    body = bytearray()
    for name, value in fields.items():
        body += f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, (filename, data) in files.items():
        body += (f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"content-type: application/octet-stream\r\n\r\n").encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--adapters", required=True, help="directory of PEFT folders a0, a1, …")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--out", required=True)
    p.add_argument("--api-key", help="unused: imports are signed, not keyed")
    args = p.parse_args()
    key, public, account = dev_account(args.data_dir)
    names = []
    for i in range(args.count):
        folder = pathlib.Path(args.adapters) / f"a{i}"
        config = (folder / "adapter_config.json").read_bytes()
        weights = (folder / "adapter_model.safetensors").read_bytes()
        adapter_id = f"bench-a{i}"
        signed_at = int(time.time())
        message = "\n".join([
            "openledger/adapter/import/v1", adapter_id, "", str(account),
            f"upload {blake3.blake3(config).hexdigest()} {blake3.blake3(weights).hexdigest()}",
            "0", "0", "public", "-", str(signed_at), "bench",
        ]).encode()
        fields = {
            "id": adapter_id, "owned_by": str(account), "price_in": "0", "price_out": "0",
            "visibility": "public", "description": "bench", "signed_at": str(signed_at),
            "public_key": public.hex(), "signature": key.sign(message).hex(),
        }
        body, content_type = multipart(fields, {
            "adapter_config": ("adapter_config.json", config),
            "adapter_model": ("adapter_model.safetensors", weights),
        })
        request = urllib.request.Request(f"{args.base_url}/v1/adapters", data=body, method="POST",
                                         headers={"content-type": content_type})
        try:
            with urllib.request.urlopen(request) as response:
                assert response.status == 201, response.status
        except urllib.error.HTTPError as error:
            sys.exit(f"importing {adapter_id}: {error.code} {error.read().decode()}")
        names.append(adapter_id)
    pathlib.Path(args.out).write_text("\n".join(names) + "\n")
    print(f"registered {len(names)} adapters for account {account}", file=sys.stderr)


if __name__ == "__main__":
    main()
