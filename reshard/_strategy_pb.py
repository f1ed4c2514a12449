"""MindSpore's ParallelStrategyMap message (node_strategy.proto), without importing MindSpore.

The serialized FileDescriptorProto below is the one in mindspore/train/node_strategy_pb2.py
(MindSpore 2.10). It is loaded into a private descriptor pool so that the engine (and its worker
processes) never pay MindSpore's import cost and never collide with MindSpore's own registration
when both live in one process (tests). Works with protobuf 3.13 and later.
"""
from google.protobuf import descriptor_pool, message_factory

_SERIALIZED = (
    b'\n\x13node_strategy.proto\x12\x11mindspore.straspb"\x1f\n\x10ParallelStrategy\x12\x0b\n\x03dim\x18\x01 \x03('
    b'\r"b\n\x11ParallelStrategys\x12\r\n\x05stage\x18\x01 \x02(\r\x12>\n\x11parallel_strategy\x18\x02 \x03(\x0b2#.minds'
    b'pore.straspb.ParallelStrategy"k\n\x14ParallelStrategyItem\x12\x11\n\tnode_name\x18\x01 \x02(\t'
    b'\x12@\n\x12parallel_strategys\x18\x02 \x02(\x0b2$.mindspore.straspb.ParallelStrategys"\x18\n\tDe'
    b'vMatrix\x12\x0b\n\x03dim\x18\x01 \x03(\r"\x18\n\tTensorMap\x12\x0b\n\x03dim\x18\x01 \x03(\x05"\x1e\n\x0fParamSplitShape\x12\x0b\n\x03dim'
    b'\x18\x01 \x03(\x03"\x1c\n\rIndicesOffset\x12\x0b\n\x03dim\x18\x01 \x03(\x03"\xbb\x02\n\x0fParallelLayouts\x120\n\ndev_matrix\x18\x01'
    b' \x03(\x0b2\x1c.mindspore.straspb.DevMatrix\x120\n\ntensor_map\x18\x02 \x03(\x0b2\x1c.mindspore.stras'
    b'pb.TensorMap\x12=\n\x11param_split_shape\x18\x03 \x03(\x0b2".mindspore.straspb.ParamSplitSh'
    b'ape\x128\n\x0eindices_offset\x18\x04 \x03(\x0b2 .mindspore.straspb.IndicesOffset\x12\r\n\x05field\x18\x05'
    b' \x02(\x05\x12\x1d\n\x15opt_weight_shard_step\x18\x06 \x02(\x05\x12\x1d\n\x15opt_weight_shard_size\x18\x07 \x02(\x05"f\n\x12Pa'
    b'rallelLayoutItem\x12\x12\n\nparam_name\x18\x01 \x02(\t\x12<\n\x10parallel_layouts\x18\x02 \x02(\x0b2".mindspo'
    b're.straspb.ParallelLayouts"!\n\x12ParallelGroupRanks\x12\x0b\n\x03dim\x18\x01 \x03(\r"l\n\x11Paralle'
    b'lGroupItem\x12\x12\n\ngroup_name\x18\x01 \x02(\t\x12C\n\x14parallel_group_ranks\x18\x02 \x02(\x0b2%.mindspore'
    b'.straspb.ParallelGroupRanks"\x9c\x01\n\x10ParallelGroupMap\x12A\n\x13parallel_group_item\x18'
    b'\x01 \x03(\x0b2$.mindspore.straspb.ParallelGroupItem\x12E\n\x16ckpt_restore_rank_list\x18\x02 '
    b'\x02(\x0b2%.mindspore.straspb.ParallelGroupRanks"\xba\x01\n\x13ParallelStrategyMap\x12\x15\n\rcu'
    b"rrent_stage\x18\x01 \x02(\r\x12G\n\x16parallel_strategy_item\x18\x02 \x03(\x0b2'.mindspore.straspb.Pa"
    b'rallelStrategyItem\x12C\n\x14parallel_layout_item\x18\x03 \x03(\x0b2%.mindspore.straspb.Par'
    b'allelLayoutItem'
)

_POOL = descriptor_pool.DescriptorPool()
_POOL.AddSerializedFile(_SERIALIZED)


def _message_class(name: str) -> type:
    """The message class of `name`: GetMessageClass (protobuf 4.22+), else the MessageFactory of
    protobuf 3.13-4.21 (what MindSpore 2.3-2.9 images ship)."""
    descriptor = _POOL.FindMessageTypeByName(name)
    get = getattr(message_factory, "GetMessageClass", None)
    return get(descriptor) if get else message_factory.MessageFactory(_POOL).GetPrototype(descriptor)


ParallelStrategyMap = _message_class("mindspore.straspb.ParallelStrategyMap")
ParallelLayouts = _message_class("mindspore.straspb.ParallelLayouts")
