"""Triggers beyond `/function/...`: the AWS Lambda Invoke API (so an unmodified boto3 client works), and later
cron and message-queue triggers. Each turns its input into a sync call through the proxy or an async task.
"""
