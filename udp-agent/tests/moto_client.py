"""EventBridge/SQS side of udp-agent/tests/moto.rs, run against moto's server.

Usage (always with the venv's interpreter, UDP_AGENT_TEST_PYTHON):

    moto_client.py ENDPOINT setup BUS RULES_JSON
        Creates event bus BUS (unless it is "default"), and for each rule in
        RULES_JSON (a JSON object name -> event pattern) an SQS queue of the
        same name, a rule on BUS with that pattern, and the queue as its
        target. Prints {"rules": {name: {"queue_url", "queue_arn",
        "rule_arn"}}}.

    moto_client.py ENDPOINT receive TIMEOUT_S QUEUE_URL=COUNT...
        Receives from every queue until it has at least COUNT messages or
        TIMEOUT_S seconds pass, then asks each queue once more (so a message
        beyond the expected ones is seen too). Received messages stay
        in flight (invisible) for 600 s, so nothing is received twice. Prints
        {QUEUE_URL: {"bodies": [...], "visible": n, "in_flight": n}} with the
        queue's attributes read at the end.

Everything goes to ENDPOINT (http://127.0.0.1:PORT) with dummy credentials;
stdout carries exactly one JSON document, errors go to stderr with exit 1.
"""

import json
import sys
import time

import boto3
from botocore.config import Config

REGION = "us-east-1"


def client(endpoint, service):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 2, "mode": "standard"},
                      connect_timeout=5, read_timeout=30),
    )


def setup(endpoint, bus, rules):
    events = client(endpoint, "events")
    sqs = client(endpoint, "sqs")
    if bus != "default":
        events.create_event_bus(Name=bus)
    out = {}
    for name, pattern in rules.items():
        url = sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        rule_arn = events.put_rule(
            Name=name,
            EventBusName=bus,
            EventPattern=json.dumps(pattern),
            State="ENABLED",
        )["RuleArn"]
        res = events.put_targets(
            Rule=name,
            EventBusName=bus,
            Targets=[{"Id": f"{name}-queue", "Arn": arn}],
        )
        if res.get("FailedEntryCount"):
            raise SystemExit(f"put_targets for {name} failed: {res}")
        out[name] = {"queue_url": url, "queue_arn": arn, "rule_arn": rule_arn}
    return {"rules": out}


def receive_some(sqs, url, wait_s):
    res = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait_s,
        VisibilityTimeout=600,
    )
    return [m["Body"] for m in res.get("Messages", [])]


def receive(endpoint, timeout_s, wanted):
    sqs = client(endpoint, "sqs")
    got = {url: [] for url in wanted}
    deadline = time.monotonic() + timeout_s
    while True:
        short = [u for u, n in wanted.items() if len(got[u]) < n]
        if not short or time.monotonic() >= deadline:
            break
        for url in short:
            got[url] += receive_some(sqs, url, 1)
    # One more look at every queue: anything beyond the expected messages.
    for url in wanted:
        got[url] += receive_some(sqs, url, 1)
    out = {}
    for url, bodies in got.items():
        attrs = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )["Attributes"]
        out[url] = {
            "bodies": bodies,
            "visible": int(attrs["ApproximateNumberOfMessages"]),
            "in_flight": int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        }
    return out


def main(argv):
    endpoint, command, *rest = argv
    if command == "setup":
        bus, rules = rest
        result = setup(endpoint, bus, json.loads(rules))
    elif command == "receive":
        timeout_s, *pairs = rest
        wanted = {}
        for pair in pairs:
            url, count = pair.rsplit("=", 1)
            wanted[url] = int(count)
        result = receive(endpoint, float(timeout_s), wanted)
    else:
        raise SystemExit(f"unknown command {command!r}")
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
