from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CollectRequest(_message.Message):
    __slots__ = ("collector_id",)
    COLLECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    collector_id: str
    def __init__(self, collector_id: _Optional[str] = ...) -> None: ...

class CollectResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionTraffic]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionTraffic, _Mapping]]] = ...) -> None: ...

class VersionTraffic(_message.Message):
    __slots__ = ("function", "version", "concurrency", "in_flight", "queued", "completed", "interval_s", "extra", "cpu", "memory", "arrived")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    ARRIVED_FIELD_NUMBER: _ClassVar[int]
    function: str
    version: str
    concurrency: float
    in_flight: int
    queued: int
    completed: int
    interval_s: float
    extra: _containers.ScalarMap[str, float]
    cpu: float
    memory: float
    arrived: int
    def __init__(self, function: _Optional[str] = ..., version: _Optional[str] = ..., concurrency: _Optional[float] = ..., in_flight: _Optional[int] = ..., queued: _Optional[int] = ..., completed: _Optional[int] = ..., interval_s: _Optional[float] = ..., extra: _Optional[_Mapping[str, float]] = ..., cpu: _Optional[float] = ..., memory: _Optional[float] = ..., arrived: _Optional[int] = ...) -> None: ...
