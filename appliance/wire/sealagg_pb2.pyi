from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskRequest(_message.Message):
    __slots__ = ("wait_seconds",)
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    wait_seconds: float
    def __init__(self, wait_seconds: _Optional[float] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("idle", "round_start", "step", "round_end", "evaluate", "run_end")
    IDLE_FIELD_NUMBER: _ClassVar[int]
    ROUND_START_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_END_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    RUN_END_FIELD_NUMBER: _ClassVar[int]
    idle: Idle
    round_start: RoundStart
    step: ProtocolStep
    round_end: RoundEnd
    evaluate: Evaluate
    run_end: RunEnd
    def __init__(self, idle: _Optional[_Union[Idle, _Mapping]] = ..., round_start: _Optional[_Union[RoundStart, _Mapping]] = ..., step: _Optional[_Union[ProtocolStep, _Mapping]] = ..., round_end: _Optional[_Union[RoundEnd, _Mapping]] = ..., evaluate: _Optional[_Union[Evaluate, _Mapping]] = ..., run_end: _Optional[_Union[RunEnd, _Mapping]] = ...) -> None: ...

class RunEnd(_message.Message):
    __slots__ = ("run_id", "status", "reason", "model_version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: str
    reason: str
    model_version: int
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class Evaluate(_message.Message):
    __slots__ = ("round_id", "model_version", "model_sha256", "metric", "deadline_unix", "federated", "run_id", "evaluation_id")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    model_version: int
    model_sha256: str
    metric: str
    deadline_unix: float
    federated: bool
    run_id: str
    evaluation_id: bytes
    def __init__(self, round_id: _Optional[bytes] = ..., model_version: _Optional[int] = ..., model_sha256: _Optional[str] = ..., metric: _Optional[str] = ..., deadline_unix: _Optional[float] = ..., federated: _Optional[bool] = ..., run_id: _Optional[str] = ..., evaluation_id: _Optional[bytes] = ...) -> None: ...

class Idle(_message.Message):
    __slots__ = ("retry_after_seconds", "current_model_version")
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    retry_after_seconds: float
    current_model_version: int
    def __init__(self, retry_after_seconds: _Optional[float] = ..., current_model_version: _Optional[int] = ...) -> None: ...

class RoundStart(_message.Message):
    __slots__ = ("round_number", "round_id", "mode", "model_version", "client_index", "participants", "threshold", "degree", "minimum_survivors", "vector_length", "clip", "max_clients", "submit_deadline_unix", "model_sha256", "contribution_weight", "ckks", "privacy", "roster", "run_id", "run_round", "run_rounds", "hyperparameters_json", "asynchronous", "buffer_number", "async_params", "async_buffer", "grouping")
    ROUND_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CKKS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ROUND_FIELD_NUMBER: _ClassVar[int]
    RUN_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    ASYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ASYNC_PARAMS_FIELD_NUMBER: _ClassVar[int]
    ASYNC_BUFFER_FIELD_NUMBER: _ClassVar[int]
    GROUPING_FIELD_NUMBER: _ClassVar[int]
    round_number: int
    round_id: bytes
    mode: str
    model_version: int
    client_index: int
    participants: _containers.RepeatedCompositeFieldContainer[Participant]
    threshold: int
    degree: int
    minimum_survivors: int
    vector_length: int
    clip: float
    max_clients: int
    submit_deadline_unix: float
    model_sha256: str
    contribution_weight: float
    ckks: CkksParams
    privacy: PrivacyParams
    roster: bytes
    run_id: str
    run_round: int
    run_rounds: int
    hyperparameters_json: str
    asynchronous: bool
    buffer_number: int
    async_params: AsyncParams
    async_buffer: bool
    grouping: Grouping
    def __init__(self, round_number: _Optional[int] = ..., round_id: _Optional[bytes] = ..., mode: _Optional[str] = ..., model_version: _Optional[int] = ..., client_index: _Optional[int] = ..., participants: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., threshold: _Optional[int] = ..., degree: _Optional[int] = ..., minimum_survivors: _Optional[int] = ..., vector_length: _Optional[int] = ..., clip: _Optional[float] = ..., max_clients: _Optional[int] = ..., submit_deadline_unix: _Optional[float] = ..., model_sha256: _Optional[str] = ..., contribution_weight: _Optional[float] = ..., ckks: _Optional[_Union[CkksParams, _Mapping]] = ..., privacy: _Optional[_Union[PrivacyParams, _Mapping]] = ..., roster: _Optional[bytes] = ..., run_id: _Optional[str] = ..., run_round: _Optional[int] = ..., run_rounds: _Optional[int] = ..., hyperparameters_json: _Optional[str] = ..., asynchronous: _Optional[bool] = ..., buffer_number: _Optional[int] = ..., async_params: _Optional[_Union[AsyncParams, _Mapping]] = ..., async_buffer: _Optional[bool] = ..., grouping: _Optional[_Union[Grouping, _Mapping]] = ...) -> None: ...

class Grouping(_message.Message):
    __slots__ = ("round_id", "members", "max_group_size", "minimum_sum", "group_index", "group_round_id")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MAX_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_SUM_FIELD_NUMBER: _ClassVar[int]
    GROUP_INDEX_FIELD_NUMBER: _ClassVar[int]
    GROUP_ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    members: _containers.RepeatedCompositeFieldContainer[Participant]
    max_group_size: int
    minimum_sum: int
    group_index: int
    group_round_id: bytes
    def __init__(self, round_id: _Optional[bytes] = ..., members: _Optional[_Iterable[_Union[Participant, _Mapping]]] = ..., max_group_size: _Optional[int] = ..., minimum_sum: _Optional[int] = ..., group_index: _Optional[int] = ..., group_round_id: _Optional[bytes] = ...) -> None: ...

class AsyncParams(_message.Message):
    __slots__ = ("buffer_size", "max_staleness", "staleness", "a", "alpha", "b", "max_open_buffers")
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    A_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    buffer_size: int
    max_staleness: int
    staleness: str
    a: float
    alpha: float
    b: int
    max_open_buffers: int
    def __init__(self, buffer_size: _Optional[int] = ..., max_staleness: _Optional[int] = ..., staleness: _Optional[str] = ..., a: _Optional[float] = ..., alpha: _Optional[float] = ..., b: _Optional[int] = ..., max_open_buffers: _Optional[int] = ...) -> None: ...

class AsyncReceipt(_message.Message):
    __slots__ = ("buffer_number", "round_number", "base_version", "current_version", "staleness", "staleness_weight", "weight", "buffered", "buffer_size", "buffer_round_id")
    BUFFER_NUMBER_FIELD_NUMBER: _ClassVar[int]
    ROUND_NUMBER_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    STALENESS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BUFFERED_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    buffer_number: int
    round_number: int
    base_version: int
    current_version: int
    staleness: int
    staleness_weight: float
    weight: float
    buffered: int
    buffer_size: int
    buffer_round_id: bytes
    def __init__(self, buffer_number: _Optional[int] = ..., round_number: _Optional[int] = ..., base_version: _Optional[int] = ..., current_version: _Optional[int] = ..., staleness: _Optional[int] = ..., staleness_weight: _Optional[float] = ..., weight: _Optional[float] = ..., buffered: _Optional[int] = ..., buffer_size: _Optional[int] = ..., buffer_round_id: _Optional[bytes] = ...) -> None: ...

class PrivacyParams(_message.Message):
    __slots__ = ("mode", "mechanism", "clip", "noise_std", "indicator_std", "min_survivors", "range_bits")
    MODE_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    INDICATOR_STD_FIELD_NUMBER: _ClassVar[int]
    MIN_SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    RANGE_BITS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    mechanism: str
    clip: float
    noise_std: float
    indicator_std: float
    min_survivors: int
    range_bits: int
    def __init__(self, mode: _Optional[str] = ..., mechanism: _Optional[str] = ..., clip: _Optional[float] = ..., noise_std: _Optional[float] = ..., indicator_std: _Optional[float] = ..., min_survivors: _Optional[int] = ..., range_bits: _Optional[int] = ...) -> None: ...

class CkksParams(_message.Message):
    __slots__ = ("poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits", "key_holder_index", "key_holder_contributes", "share_secret_key", "max_error")
    POLY_MODULUS_DEGREE_FIELD_NUMBER: _ClassVar[int]
    COEFF_MOD_BIT_SIZES_FIELD_NUMBER: _ClassVar[int]
    SCALE_BITS_FIELD_NUMBER: _ClassVar[int]
    KEY_HOLDER_INDEX_FIELD_NUMBER: _ClassVar[int]
    KEY_HOLDER_CONTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SHARE_SECRET_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_FIELD_NUMBER: _ClassVar[int]
    poly_modulus_degree: int
    coeff_mod_bit_sizes: _containers.RepeatedScalarFieldContainer[int]
    scale_bits: int
    key_holder_index: int
    key_holder_contributes: bool
    share_secret_key: bool
    max_error: float
    def __init__(self, poly_modulus_degree: _Optional[int] = ..., coeff_mod_bit_sizes: _Optional[_Iterable[int]] = ..., scale_bits: _Optional[int] = ..., key_holder_index: _Optional[int] = ..., key_holder_contributes: _Optional[bool] = ..., share_secret_key: _Optional[bool] = ..., max_error: _Optional[float] = ...) -> None: ...

class Participant(_message.Message):
    __slots__ = ("index", "name", "identity_key", "base_version")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_KEY_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    identity_key: bytes
    base_version: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., identity_key: _Optional[bytes] = ..., base_version: _Optional[int] = ...) -> None: ...

class ProtocolStep(_message.Message):
    __slots__ = ("round_id", "phase", "payload", "deadline_unix")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    phase: int
    payload: bytes
    deadline_unix: float
    def __init__(self, round_id: _Optional[bytes] = ..., phase: _Optional[int] = ..., payload: _Optional[bytes] = ..., deadline_unix: _Optional[float] = ...) -> None: ...

class RoundEnd(_message.Message):
    __slots__ = ("round_id", "outcome", "reason", "model_version")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[RoundEnd.Outcome]
        PUBLISHED: _ClassVar[RoundEnd.Outcome]
        PENDING_APPROVAL: _ClassVar[RoundEnd.Outcome]
        REJECTED: _ClassVar[RoundEnd.Outcome]
        ABORTED: _ClassVar[RoundEnd.Outcome]
        EXCLUDED: _ClassVar[RoundEnd.Outcome]
    OUTCOME_UNSPECIFIED: RoundEnd.Outcome
    PUBLISHED: RoundEnd.Outcome
    PENDING_APPROVAL: RoundEnd.Outcome
    REJECTED: RoundEnd.Outcome
    ABORTED: RoundEnd.Outcome
    EXCLUDED: RoundEnd.Outcome
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    outcome: RoundEnd.Outcome
    reason: str
    model_version: int
    def __init__(self, round_id: _Optional[bytes] = ..., outcome: _Optional[_Union[RoundEnd.Outcome, str]] = ..., reason: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("round_id", "phase", "total_bytes", "kind", "weight", "metadata_json", "wait_seconds", "base_version")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    phase: int
    total_bytes: int
    kind: str
    weight: float
    metadata_json: str
    wait_seconds: float
    base_version: int
    def __init__(self, round_id: _Optional[bytes] = ..., phase: _Optional[int] = ..., total_bytes: _Optional[int] = ..., kind: _Optional[str] = ..., weight: _Optional[float] = ..., metadata_json: _Optional[str] = ..., wait_seconds: _Optional[float] = ..., base_version: _Optional[int] = ...) -> None: ...

class UploadMessage(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SubmitAck(_message.Message):
    __slots__ = ("accepted", "detail", "next", "receipt")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    next: Task
    receipt: AsyncReceipt
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ..., next: _Optional[_Union[Task, _Mapping]] = ..., receipt: _Optional[_Union[AsyncReceipt, _Mapping]] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("version", "total_bytes", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: int
    total_bytes: int
    sha256: str
    def __init__(self, version: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class AdminQuery(_message.Message):
    __slots__ = ("view", "args_json")
    VIEW_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    view: str
    args_json: str
    def __init__(self, view: _Optional[str] = ..., args_json: _Optional[str] = ...) -> None: ...

class AdminQueryReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class RevokeRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AdminActionReply(_message.Message):
    __slots__ = ("ok", "detail")
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    detail: str
    def __init__(self, ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ConsoleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConsoleReply(_message.Message):
    __slots__ = ("url", "expires_seconds")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_SECONDS_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_seconds: float
    def __init__(self, url: _Optional[str] = ..., expires_seconds: _Optional[float] = ...) -> None: ...

class DecisionRequest(_message.Message):
    __slots__ = ("round_number", "approve", "reason")
    ROUND_NUMBER_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round_number: int
    approve: bool
    reason: str
    def __init__(self, round_number: _Optional[int] = ..., approve: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class DecisionReply(_message.Message):
    __slots__ = ("ok", "detail")
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    detail: str
    def __init__(self, ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class AttestRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class AttestReply(_message.Message):
    __slots__ = ("format", "evidence", "certificates", "tls_certificate_der", "additional", "collateral")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    TLS_CERTIFICATE_DER_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_FIELD_NUMBER: _ClassVar[int]
    COLLATERAL_FIELD_NUMBER: _ClassVar[int]
    format: str
    evidence: bytes
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    tls_certificate_der: bytes
    additional: _containers.RepeatedCompositeFieldContainer[EvidenceItem]
    collateral: bytes
    def __init__(self, format: _Optional[str] = ..., evidence: _Optional[bytes] = ..., certificates: _Optional[_Iterable[bytes]] = ..., tls_certificate_der: _Optional[bytes] = ..., additional: _Optional[_Iterable[_Union[EvidenceItem, _Mapping]]] = ..., collateral: _Optional[bytes] = ...) -> None: ...

class EvidenceItem(_message.Message):
    __slots__ = ("format", "evidence", "certificates")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    format: str
    evidence: bytes
    certificates: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, format: _Optional[str] = ..., evidence: _Optional[bytes] = ..., certificates: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AttestationReport(_message.Message):
    __slots__ = ("accepted", "format", "reason", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    format: str
    reason: str
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., format: _Optional[str] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AttestationReportAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RosterRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class RosterReply(_message.Message):
    __slots__ = ("roster",)
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    roster: bytes
    def __init__(self, roster: _Optional[bytes] = ...) -> None: ...

class RoundRefusal(_message.Message):
    __slots__ = ("round_id", "code", "detail")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    code: str
    detail: str
    def __init__(self, round_id: _Optional[bytes] = ..., code: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RoundRefusalAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RenewalRequest(_message.Message):
    __slots__ = ("csr_der",)
    CSR_DER_FIELD_NUMBER: _ClassVar[int]
    csr_der: bytes
    def __init__(self, csr_der: _Optional[bytes] = ...) -> None: ...

class RenewalReply(_message.Message):
    __slots__ = ("certificate_pem", "ca_bundle_pem", "not_after")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_BUNDLE_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_bundle_pem: bytes
    not_after: str
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_bundle_pem: _Optional[bytes] = ..., not_after: _Optional[str] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("name", "mode", "rounds", "hyperparameters_json", "base_model_version", "start", "schedule", "async_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    ASYNC_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: str
    rounds: int
    hyperparameters_json: str
    base_model_version: int
    start: bool
    schedule: str
    async_json: str
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[str] = ..., rounds: _Optional[int] = ..., hyperparameters_json: _Optional[str] = ..., base_model_version: _Optional[int] = ..., start: _Optional[bool] = ..., schedule: _Optional[str] = ..., async_json: _Optional[str] = ...) -> None: ...

class RunControl(_message.Message):
    __slots__ = ("run_id", "action", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    action: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("ok", "detail", "run_json")
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RUN_JSON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    detail: str
    run_json: str
    def __init__(self, ok: _Optional[bool] = ..., detail: _Optional[str] = ..., run_json: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class EvaluationRequest(_message.Message):
    __slots__ = ("model_version", "run_id", "deadline_seconds")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    run_id: str
    deadline_seconds: float
    def __init__(self, model_version: _Optional[int] = ..., run_id: _Optional[str] = ..., deadline_seconds: _Optional[float] = ...) -> None: ...

class EvaluationReply(_message.Message):
    __slots__ = ("ok", "detail", "json")
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    detail: str
    json: str
    def __init__(self, ok: _Optional[bool] = ..., detail: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("round_id",)
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    round_id: bytes
    def __init__(self, round_id: _Optional[bytes] = ...) -> None: ...

class PresenceNotice(_message.Message):
    __slots__ = ("beat_seconds", "silence_seconds", "dropped_round_id", "dropped_phase", "dropped_reason")
    BEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SILENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    DROPPED_PHASE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    beat_seconds: float
    silence_seconds: float
    dropped_round_id: bytes
    dropped_phase: str
    dropped_reason: str
    def __init__(self, beat_seconds: _Optional[float] = ..., silence_seconds: _Optional[float] = ..., dropped_round_id: _Optional[bytes] = ..., dropped_phase: _Optional[str] = ..., dropped_reason: _Optional[str] = ...) -> None: ...
