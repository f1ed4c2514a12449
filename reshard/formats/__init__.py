"""Checkpoint storage behind reader/writer interfaces (.ckpt and .safetensors).

CONTRACT STUB written before the implementation.

TensorMeta.dtype is MindSpore's tensor_type name ("Float32", "Float16", "BFloat16", "Int64",
"Bool", "str", ...). Arrays travel in a *storage* numpy dtype of the same item size (BFloat16 ->
np.uint16) so no value is ever converted.

    open_reader(path) -> CheckpointReader           # by suffix: .ckpt / .safetensors
        reader.metas: dict[str, TensorMeta]         # in file order
        reader.read(name, region=None) -> np.ndarray
            region: tuple of (start, stop) per dimension; reads only the bytes it needs
        reader.close(); usable as a context manager
    open_writer(path, metas, fmt=None) -> CheckpointWriter   # fmt from suffix when None
        writer.write(name, chunk)   # tensors in metas order; a tensor may come as several
                                    # consecutive axis-0 chunks
        writer.commit()             # fsync, rename temp -> path
        writer.abort()              # remove the temporary file
"""
