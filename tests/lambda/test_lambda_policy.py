"""``mastmirror lambda policy``: the execution role's least-privilege policy, its trust
policy and the daemon's policy; their shape, IAM's acceptance (moto validates policy
documents), and, with moto enforcing IAM, that the real handler can do its work with
exactly the execution policy and nothing outside it."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from click.testing import CliRunner
from lambda_helpers import Archive

from daemon.cli import main
from daemon.lambda_deploy import daemon_policy, execution_role_policy, trust_policy

ACCOUNT = "123456789012"
REGION = "us-east-1"


def _exec(output: str = "s3://mirror-out/catalogs", archive: str = "stpubdata") -> dict:
    return execution_role_policy(archive_bucket=archive, output_url=output,
                                 function="mastmirror-sep", region=REGION, account=ACCOUNT)


def _statements(doc: dict) -> dict[str, dict]:
    return {s["Sid"]: s for s in doc["Statement"]}


def _actions(stmt: dict) -> set[str]:
    a = stmt["Action"]
    return {a} if isinstance(a, str) else set(a)


def test_execution_policy_is_least_privilege() -> None:
    doc = _exec()
    assert doc["Version"] == "2012-10-17"
    st = _statements(doc)
    assert set(st) == {"ReadArchiveImages", "TellMissingArchiveImages", "WriteCatalogs",
                       "WriteOwnLogs"}
    assert all(s["Effect"] == "Allow" for s in st.values())
    # Listing is allowed on the archive's public prefix only (so a missing image is a 404).
    listing = st.pop("TellMissingArchiveImages")
    assert _actions(listing) == {"s3:ListBucket"}
    assert listing["Resource"] == "arn:aws:s3:::stpubdata"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["hst/public/*"]}}
    assert all("Condition" not in s for s in st.values())
    assert _actions(st["ReadArchiveImages"]) == {"s3:GetObject"}
    assert st["ReadArchiveImages"]["Resource"] == "arn:aws:s3:::stpubdata/hst/public/*"
    assert _actions(st["WriteCatalogs"]) == {"s3:PutObject", "s3:DeleteObject"}
    assert st["WriteCatalogs"]["Resource"] == "arn:aws:s3:::mirror-out/catalogs/*"
    assert _actions(st["WriteOwnLogs"]) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert st["WriteOwnLogs"]["Resource"] == (
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/mastmirror-sep:*")
    text = json.dumps(st)
    assert '"*"' not in text and "s3:*" not in text and "ListBucket" not in text


def test_execution_policy_follows_the_config() -> None:
    # Output at a bucket's root; the function given as an ARN.
    doc = execution_role_policy(
        archive_bucket="my-mirror", output_url="s3://cats",
        function=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:sep-prod")
    st = _statements(doc)
    assert st["ReadArchiveImages"]["Resource"] == "arn:aws:s3:::my-mirror/hst/public/*"
    assert st["WriteCatalogs"]["Resource"] == "arn:aws:s3:::cats/*"
    assert st["WriteOwnLogs"]["Resource"].endswith(":log-group:/aws/lambda/sep-prod:*")
    # A local (file://) output or archive needs no S3 statement.
    local = _statements(_exec(output="file:///srv/catalogs", archive="file:///srv/archive"))
    assert set(local) == {"WriteOwnLogs"}


def test_trust_and_daemon_policies() -> None:
    trust = trust_policy()
    (stmt,) = trust["Statement"]
    assert stmt == {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                    "Action": "sts:AssumeRole"}
    d = _statements(daemon_policy(function="mastmirror-sep", output_url="s3://mirror-out/cat",
                                  region=REGION, account=ACCOUNT))
    fn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:mastmirror-sep"
    assert d["InvokeExtraction"]["Action"] == "lambda:InvokeFunction"
    assert d["InvokeExtraction"]["Resource"] == [fn, f"{fn}:*"]
    # What Lambda can run at once (the daemon keeps its in-flight bound within it).
    assert (d["ReadFunctionConcurrency"]["Action"], d["ReadFunctionConcurrency"]["Resource"]) \
        == ("lambda:GetFunctionConcurrency", fn)
    assert (d["ReadAccountConcurrency"]["Action"], d["ReadAccountConcurrency"]["Resource"]) \
        == ("lambda:GetAccountSettings", "*")
    assert d["ListResults"]["Action"] == "s3:ListBucket"
    assert d["ListResults"]["Resource"] == "arn:aws:s3:::mirror-out"
    assert d["ListResults"]["Condition"] == {"StringLike": {"s3:prefix": ["cat", "cat/*"]}}
    assert d["ReadResults"] == {"Sid": "ReadResults", "Effect": "Allow", "Action": "s3:GetObject",
                                "Resource": "arn:aws:s3:::mirror-out/cat/*"}
    assert "PutObject" not in json.dumps(d) and "stpubdata" not in json.dumps(d)


def test_iam_accepts_the_documents(aws: str) -> None:
    iam = boto3.client("iam")
    for name, doc in [("exec", _exec()), ("daemon", daemon_policy(
            function="mastmirror-sep", output_url="s3://mirror-out/cat", region=REGION,
            account=ACCOUNT))]:
        arn = iam.create_policy(PolicyName=f"mastmirror-{name}-{id(doc)}",
                                PolicyDocument=json.dumps(doc))["Policy"]["Arn"]
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        stored = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]
        assert stored["Document"] == doc or json.loads(stored["Document"]) == doc
    role = iam.create_role(RoleName=f"mastmirror-sep-{id(iam)}",
                           AssumeRolePolicyDocument=json.dumps(trust_policy()))
    assert role["Role"]["Arn"].startswith("arn:aws:iam::")
    # moto validates for real: a malformed action is refused.
    broken = _exec()
    broken["Statement"][0]["Action"] = "s3GetObject"
    with pytest.raises(botocore.exceptions.ClientError, match="MalformedPolicyDocument"):
        iam.create_policy(PolicyName="broken", PolicyDocument=json.dumps(broken))


def test_cli_prints_the_policies(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[archive]\nbucket = "stpubdata"\n[output]\nurl = "s3://mirror-out/cat"\n'
                      f'[executor]\nfunction = "arn:aws:lambda:eu-west-1:{ACCOUNT}:function:sep"\n')
    runner = CliRunner()
    out = runner.invoke(main, ["--config", str(config), "lambda", "policy"])
    assert out.exit_code == 0, out.output
    printed = json.loads(out.stdout)
    assert printed == execution_role_policy(
        archive_bucket="stpubdata", output_url="s3://mirror-out/cat",
        function=f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:sep", region="eu-west-1",
        account=ACCOUNT, anonymous=True)
    # [archive] anonymous (the default): the public archive is read unsigned, so the role
    # needs no right on it at all.
    assert {st["Sid"] for st in printed["Statement"]} == {"WriteCatalogs", "WriteOwnLogs"}
    trust = runner.invoke(main, ["--config", str(config), "lambda", "policy", "--trust"])
    assert json.loads(trust.stdout) == trust_policy()
    daemon = runner.invoke(main, ["--config", str(config), "lambda", "policy", "--daemon",
                                  "--region", "eu-west-1"])
    assert json.loads(daemon.stdout)["Statement"][0]["Resource"][0] == (
        f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:sep")


# -- with IAM enforced --------------------------------------------------------------------

_SERVER = ("from moto.server import ThreadedMotoServer; import sys; "
           "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False); s.start(); "
           "print('http://%s:%d' % s.get_host_and_port(), flush=True); sys.stdin.read()")


@pytest.fixture
def enforcing_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server of its own (IAM enforcement is per moto process), on loopback."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                 "AWS_ENDPOINT_URL": url}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    try:
        yield url
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def _user(iam: Any, name: str, doc: dict) -> dict[str, str]:
    iam.create_user(UserName=name)
    arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(doc))["Policy"]["Arn"]
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def _client(env: dict[str, str]) -> Any:
    # A session of its own: the default one caches the credentials it first resolved.
    return boto3.session.Session(aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).client("s3")


def _denied(call: Any) -> bool:
    try:
        call()
    except botocore.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"] == "AccessDenied"
    return False


def test_handler_works_with_exactly_the_execution_policy(
        enforcing_moto: str, flt_archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    from lambda_sep.handler import handler

    admin = boto3.client("s3")
    for bucket in ("stpubdata", "mirror-out"):
        admin.create_bucket(Bucket=bucket)
    flt = (flt_archive.root / flt_archive.key).read_bytes()
    admin.put_object(Bucket="stpubdata", Key=flt_archive.key, Body=flt)
    admin.put_object(Bucket="stpubdata", Key="hst/private/secret.fits", Body=b"secret")
    iam = boto3.client("iam")
    fn_env = _user(iam, "function", _exec())
    daemon_env = _user(iam, "daemon", daemon_policy(
        function="mastmirror-sep", output_url="s3://mirror-out/catalogs", region=REGION,
        account=ACCOUNT))
    req = urllib.request.Request(f"{enforcing_moto}/moto-api/reset-auth", data=b"0",
                                 method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).read()  # from now on moto checks every request

    for k, v in fn_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MASTMIRROR_ALLOWED_BUCKETS", "stpubdata")
    monkeypatch.setenv("MASTMIRROR_ALLOWED_OUTPUTS", "s3://mirror-out/catalogs")
    # Signed reads of the archive (a private mirror, [archive] anonymous = false): the
    # statements under test are the ones that grant them.
    monkeypatch.setenv("MASTMIRROR_ARCHIVE_ANONYMOUS", "0")
    event = {"obs_id": flt_archive.obs_id, "input": {"bucket": "stpubdata",
             "key": flt_archive.key}, "output": "s3://mirror-out/catalogs", "sep": {},
             "attempt": 1}
    summary = handler(event, None)
    # Done, and the stale-marker delete went through too (it needs s3:DeleteObject).
    assert summary["status"] == "done" and summary["reason"] is None, summary
    catalog = f"catalogs/{summary['output_key']}"

    fn = _client(fn_env)
    assert _denied(lambda: fn.get_object(Bucket="stpubdata", Key="hst/private/secret.fits"))
    assert _denied(lambda: fn.put_object(Bucket="stpubdata", Key=flt_archive.key, Body=b"x"))
    assert _denied(lambda: fn.put_object(Bucket="mirror-out", Key="elsewhere/x", Body=b"x"))
    assert _denied(lambda: fn.get_object(Bucket="mirror-out", Key=catalog))
    assert _denied(lambda: fn.list_objects_v2(Bucket="mirror-out", Prefix="catalogs/"))

    daemon = _client(daemon_env)
    head = daemon.head_object(Bucket="mirror-out", Key=catalog)
    assert int(head["Metadata"]["sources"]) == summary["sources"]
    keys = [o["Key"] for o in daemon.list_objects_v2(
        Bucket="mirror-out", Prefix=catalog.rsplit("_sep", 1)[0])["Contents"]]
    assert keys == [catalog]
    assert _denied(lambda: daemon.get_object(Bucket="stpubdata", Key=flt_archive.key))
    assert _denied(lambda: daemon.put_object(Bucket="mirror-out", Key=catalog, Body=b"x"))
    # (moto does not evaluate the s3:prefix condition of ListBucket; its shape is tested above.)
