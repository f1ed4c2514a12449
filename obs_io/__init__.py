"""Object storage behind Huawei moxing's `mox.file` API: local paths, obs:// and s3:// URLs."""
