def test_bucket_is_reachable(s3_server, bucket):
    c = s3_server.client()
    c.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    assert c.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"
