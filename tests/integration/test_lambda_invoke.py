"""An unmodified boto3 Lambda client pointed at a real `nest up`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config

if TYPE_CHECKING:
    from tests.integration.conftest import Platform

pytestmark = pytest.mark.integration

HANDLER = """
def handler(event, context):
    if event.get("fail"):
        raise ValueError("no thanks")
    return {"echo": event, "name": context.function_name}
"""


@pytest.fixture(scope="module")
def aws(platform: Platform) -> Any:
    platform.deploy("lam", HANDLER, "handler: main:handler\nhandler_style: lambda\n")
    platform.deploy("plain", "def handle(request):\n    return {'got': request.json()}\n")
    return boto3.client(
        "lambda",
        endpoint_url=platform.url,
        region_name="us-east-1",
        aws_access_key_id="nest",
        aws_secret_access_key="nest",
        config=Config(retries={"max_attempts": 1}),
    )


def test_request_response_returns_the_result(aws: Any) -> None:
    response = aws.invoke(FunctionName="lam", Payload=json.dumps({"a": 1}).encode())
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"echo": {"a": 1}, "name": "lam"}


def test_a_raising_handler_reports_an_unhandled_function_error(aws: Any) -> None:
    response = aws.invoke(FunctionName="lam", Payload=b'{"fail": true}')
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    error = json.loads(response["Payload"].read())
    assert (error["errorType"], error["errorMessage"]) == ("ValueError", "no thanks")


def test_an_event_invocation_is_queued_and_runs(aws: Any, platform: Platform) -> None:
    response = aws.invoke(FunctionName="plain", InvocationType="Event", Payload=b'{"x": 2}')
    assert response["StatusCode"] == 202
    call_id = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]

    def done() -> bool:
        with platform.http() as http:
            return http.get(f"/api/v1/invocations/{call_id}").json()["status"] == "succeeded"

    platform.wait_for(done, what="the Event invocation")


def test_dry_run_and_errors_map_to_botocore_exceptions(aws: Any) -> None:
    assert aws.invoke(FunctionName="lam", InvocationType="DryRun")["StatusCode"] == 204
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.invoke(FunctionName="nobody", Payload=b"{}")
    with pytest.raises(aws.exceptions.ResourceNotFoundException):
        aws.invoke(FunctionName="lam", Qualifier="7", Payload=b"{}")
    with pytest.raises(aws.exceptions.InvalidRequestContentException):
        aws.invoke(FunctionName="lam", Payload=b"not json")
    arn = "arn:aws:lambda:us-east-1:123456789012:function:lam"
    assert aws.invoke(FunctionName=arn, Payload=b"{}")["StatusCode"] == 200
