"""
Tests for the NECP codec (lvsfeedback.necp's wire, units, messages, framing
and auth modules): the NECP wire format, byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lvsfeedback.necp.auth import Authenticator
from lvsfeedback.necp.framing import Decoder, RequestTemplate, decode, encode
from lvsfeedback.necp.messages import (
    ErrorReply,
    ExceptionAdd,
    ExceptionAddAck,
    ExceptionDel,
    ExceptionDelAck,
    ExceptionQuery,
    ExceptionReset,
    ExceptionResetAck,
    ExceptionResp,
    Init,
    InitAck,
    Keepalive,
    KeepaliveAck,
    Noop,
    Start,
    StartAck,
    Stop,
    StopAck,
)
from lvsfeedback.necp.units import (
    CAPACITY_QUERY,
    MAX_CAPACITY,
    Answer,
    ExceptionRule,
    InstalledException,
    Query,
    RawUnit,
    Service,
    pack_unit,
)
from lvsfeedback.necp.wire import (
    HEADER,
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_PAYLOAD,
    MAX_SEQUENCE,
    PROTOCOL_ID,
    UNIT,
    UNIT_SIZE,
    AuthenticationFailed,
    BadSequenceNumber,
    Flag,
    MessageRefused,
    NECPError,
    Opcode,
    ReservedOpcode,
    UnsupportedVersion,
)

EXAMPLES = 200

# The worked example of necp.md: KEEPALIVE asking the health of TCP port 80,
# request id 2, and its answer, 75.
WORKED_KEEPALIVE = bytes.fromhex(
    "414A0001 01030002 00000000 00000000 00000020"
    "00000001 00000006 00000050 00000000"
    "00000000 00000000 00000000 00000000"
)
WORKED_ANSWER = bytes.fromhex(
    "414A0001 01040002 00000000 00000000 00000020"
    "00000001 00000006 00000050 0000004B"
    "00000000 00000000 00000000 00000000"
)


def header(
    *,
    protocol_id=PROTOCOL_ID,
    flags=0,
    version=1,
    opcode=Opcode.NOOP,
    request_id=0,
    sequence=0,
    length=0,
) -> bytes:
    return HEADER.pack(protocol_id, flags, version, opcode, request_id, sequence, length)


# Strategies: every message type with values that fit their fields.
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
ipv4 = st.builds(IPv4Address, u32)
request_ids = u16
queries = st.builds(Query, u32, u8, u16)
health_answers = st.builds(Answer, st.just(1), u8, u16, st.integers(0, 100))
capacity_answers = st.builds(Answer, st.just(CAPACITY_QUERY), u8, u16, st.integers(0, MAX_CAPACITY))
other_answers = st.builds(Answer, st.integers(2, 0xFFFFFFFF).filter(lambda t: t != CAPACITY_QUERY), u8, u16, u32)
answers = st.one_of(health_answers, capacity_answers, other_answers)
services = st.builds(Service, u8, u8, u16)
rules = st.builds(ExceptionRule, u32, u32, ipv4, u32, ipv4, u32, u8, u16)
installed = st.builds(InstalledException, u32, ipv4, ipv4, u32, ipv4, u32, u8, u16)
raw_units = st.builds(RawUnit, u32, u32, u32, u32, u32, u32, u32, u32)


def units(strategy):
    return st.lists(strategy, max_size=5).map(tuple)


sequences = st.integers(0, MAX_SEQUENCE)
error_replies = st.one_of(
    st.builds(
        ErrorReply,
        opcode=st.just(Opcode.KEEPALIVE_ACK),
        request_id=request_ids,
        units=units(queries),
    ),
    st.builds(
        ErrorReply,
        opcode=st.sampled_from([Opcode.START_ACK, Opcode.STOP_ACK]),
        request_id=request_ids,
        units=units(services),
    ),
    st.builds(
        ErrorReply,
        opcode=st.sampled_from([Opcode.EXCEPTION_ADD_ACK, Opcode.EXCEPTION_DEL_ACK]),
        request_id=request_ids,
        units=units(rules),
    ),
    st.builds(
        ErrorReply,
        opcode=st.sampled_from([Opcode.INIT_ACK, Opcode.EXCEPTION_RESET_ACK, 0x42]),
        request_id=request_ids,
        flags=st.sampled_from(
            [
                Flag.ERROR,
                Flag.ERROR | Flag.VERSION_MISMATCH,
                Flag.ERROR | Flag.AUTH_REQUIRED,
                Flag.ERROR | Flag.BAD_SEQUENCE,
            ]
        ),
        units=units(raw_units),
    ),
)
messages = st.one_of(
    st.builds(Noop, request_id=request_ids),
    st.builds(Init, request_id=request_ids, authenticate=st.just(False), answers_capacity=st.booleans()),
    st.builds(Init, request_id=request_ids, authenticate=st.just(True), receive_sequence=sequences,
              answers_capacity=st.booleans()),
    st.builds(InitAck, request_id=request_ids, receive_sequence=sequences),
    st.builds(Keepalive, request_id=request_ids, queries=units(queries)),
    st.builds(KeepaliveAck, request_id=request_ids, answers=units(answers)),
    st.builds(Start, request_id=request_ids, services=units(services)),
    st.builds(StartAck, request_id=request_ids),
    st.builds(Stop, request_id=request_ids, services=units(services)),
    st.builds(StopAck, request_id=request_ids),
    st.builds(ExceptionAdd, request_id=request_ids, rules=units(rules)),
    st.builds(ExceptionAddAck, request_id=request_ids),
    st.builds(ExceptionDel, request_id=request_ids, rules=units(rules)),
    st.builds(ExceptionDelAck, request_id=request_ids),
    st.builds(ExceptionReset, request_id=request_ids),
    st.builds(ExceptionResetAck, request_id=request_ids),
    st.builds(ExceptionQuery, request_id=request_ids, filter=installed),
    st.builds(ExceptionResp, request_id=request_ids, entries=units(installed)),
    error_replies,
)


def drain(decoder: Decoder) -> list:
    """Every whole message the decoder holds."""
    found = []
    while (message := decoder.next_message()) is not None:
        found.append(message)
    return found


class WorkedExampleTests(SynchronousTestCase):
    def test_keepalive_encodes_to_the_worked_example(self):
        message = Keepalive(request_id=2, queries=(Query.health(6, 80),))
        self.assertEqual(encode(message), WORKED_KEEPALIVE)

    def test_keepalive_with_its_queries_packed_beforehand_encodes_the_same(self):
        queries = (Query.health(6, 80),)
        message = Keepalive(request_id=2, queries=queries, packed=pack_unit(queries[0]))
        self.assertEqual(encode(message), WORKED_KEEPALIVE)
        self.assertEqual(message, Keepalive(request_id=2, queries=queries))

    def test_worked_example_decodes_to_a_health_query(self):
        self.assertEqual(
            decode(WORKED_KEEPALIVE), Keepalive(request_id=2, queries=(Query(1, 6, 80),))
        )

    def test_answer_encodes_to_the_worked_example(self):
        message = KeepaliveAck(request_id=2, answers=(Answer(1, 6, 80, 75),))
        self.assertEqual(encode(message), WORKED_ANSWER)

    def test_answer_differs_from_the_query_only_in_opcode_and_data3(self):
        differing = [i for i, (a, b) in enumerate(zip(WORKED_KEEPALIVE, WORKED_ANSWER)) if a != b]
        self.assertEqual(differing, [5, 20 + 15])


class LayoutTests(SynchronousTestCase):
    """Field positions of the units whose layout the draft fixes."""

    def fields(self, message) -> tuple:
        return UNIT.unpack(encode(message)[HEADER_SIZE:])

    def test_init_asking_for_authentication_splits_the_sequence_into_halves(self):
        fields = self.fields(Init(authenticate=True, receive_sequence=0x0000000A_0000000B))
        self.assertEqual(fields, (1, 0xA, 0xB, 0, 0, 0, 0, 0))

    def test_init_ack_carries_the_sequence_in_data0_and_data1(self):
        fields = self.fields(InitAck(receive_sequence=0x12345678_9ABCDEF0))
        self.assertEqual(fields, (0x12345678, 0x9ABCDEF0, 0, 0, 0, 0, 0, 0))

    def test_start_unit_is_forwarding_protocol_port(self):
        fields = self.fields(Start(services=(Service(3, 17, 53),)))
        self.assertEqual(fields, (3, 17, 53, 0, 0, 0, 0, 0))

    def test_exception_unit_puts_protocol_in_data6_and_port_in_data7(self):
        rule = ExceptionRule(
            scope=1,
            ttl=30,
            source=IPv4Address("10.1.2.3"),
            source_prefix=32,
            destination=IPv4Address("192.0.2.0"),
            destination_prefix=24,
            protocol=6,
            port=443,
        )
        fields = self.fields(ExceptionAdd(rules=(rule,)))
        self.assertEqual(fields, (1, 30, 0x0A010203, 32, 0xC0000200, 24, 6, 443))

    def test_empty_payload_is_sent_without_the_basic_payload_flag(self):
        data = encode(StartAck(request_id=7))
        self.assertEqual(data, header(opcode=Opcode.START_ACK, request_id=7))

    def test_units_set_the_basic_payload_flag(self):
        flags = HEADER.unpack_from(encode(Start(services=(Service(1, 6, 80),))))[1]
        self.assertEqual(flags, Flag.BASIC_PAYLOAD)

    def test_error_reply_sets_error_and_reason_flags(self):
        reply = ErrorReply(opcode=Opcode.KEEPALIVE_ACK, flags=Flag.ERROR | Flag.BAD_SEQUENCE)
        flags = HEADER.unpack_from(encode(reply))[1]
        self.assertEqual(flags, Flag.ERROR | Flag.BAD_SEQUENCE)

    def test_empty_payload_with_basic_payload_flag_is_accepted(self):
        data = header(opcode=Opcode.STOP_ACK, flags=Flag.BASIC_PAYLOAD, request_id=4)
        self.assertEqual(decode(data), StopAck(request_id=4))

    def test_protocol_and_port_keep_only_their_low_bits(self):
        payload = UNIT.pack(1, 0x1206, 0xABCD0050, 0, 0, 0, 0, 0)
        data = header(opcode=Opcode.KEEPALIVE, flags=Flag.BASIC_PAYLOAD, length=32) + payload
        self.assertEqual(decode(data).queries, (Query(1, 6, 80),))


class RoundTripTests(SynchronousTestCase):
    @settings(max_examples=EXAMPLES, deadline=None)
    @given(messages)
    def test_every_message_survives_encode_and_decode(self, message):
        self.assertEqual(decode(encode(message)), message)

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(messages, st.binary(min_size=1, max_size=64), st.integers(0, 2**40))
    def test_every_message_survives_signing_and_verification(self, message, secret, now):
        sender, receiver = Authenticator(secret), Authenticator(secret)
        first = Authenticator.initial_sequence(now)
        sender.start_sending(first)
        receiver.start_receiving(first)
        self.assertEqual(decode(sender.encode(message, now), receiver), message)

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(messages, request_ids)
    def test_a_template_gives_the_encoders_bytes_under_any_request_id(self, message, request_id):
        expected = encode(dataclasses.replace(message, request_id=request_id))
        self.assertEqual(RequestTemplate(message).encode(request_id), expected)

    def test_a_template_refuses_a_request_id_out_of_range_as_the_encoder_does(self):
        template = RequestTemplate(Keepalive(request_id=1, queries=(Query(1, 6, 80),)))
        for request_id in (-1, 0x10000):
            with self.assertRaises(NECPError):
                encode(Keepalive(request_id=request_id, queries=(Query(1, 6, 80),)))
            with self.assertRaises(NECPError):
                template.encode(request_id)

    @settings(max_examples=EXAMPLES // 2, deadline=None)
    @given(st.lists(messages, min_size=1, max_size=8), st.data())
    def test_decoder_yields_the_same_messages_for_any_chunking(self, sent, data):
        stream = b"".join(encode(message) for message in sent)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
        decoder = Decoder()
        received = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            decoder.feed(stream[start:end])
            received.extend(drain(decoder))
        self.assertEqual(received, sent)
        self.assertEqual(decoder.buffered, 0)

    def test_decoder_fed_one_byte_at_a_time_yields_each_message_once_complete(self):
        decoder = Decoder()
        for byte in WORKED_KEEPALIVE[:-1]:
            decoder.feed(bytes([byte]))
            self.assertIsNone(decoder.next_message())
        decoder.feed(WORKED_KEEPALIVE[-1:])
        self.assertEqual(decoder.next_message().queries, (Query(1, 6, 80),))

    def test_decoder_yields_many_messages_from_one_chunk(self):
        decoder = Decoder()
        decoder.feed(WORKED_KEEPALIVE * 3 + WORKED_ANSWER[:10])
        self.assertEqual(len(drain(decoder)), 3)
        self.assertEqual(decoder.buffered, 10)

    def test_decoder_changes_no_chunk_it_is_fed(self):
        # A chunk fed while nothing is held is read in place, not copied; the
        # part of a message left in it, and what follows, are gathered in a
        # buffer of the decoder's own.
        chunks = [WORKED_KEEPALIVE + WORKED_ANSWER[:10], bytearray(WORKED_ANSWER[10:20]), WORKED_ANSWER[20:],
                  bytearray(WORKED_KEEPALIVE[:5]), WORKED_KEEPALIVE[5:]]
        copies = [bytes(chunk) for chunk in chunks]
        decoder = Decoder()
        received = []
        for chunk in chunks:
            decoder.feed(chunk)
            received += drain(decoder)
        self.assertEqual(len(received), 3)
        self.assertEqual([bytes(chunk) for chunk in chunks], copies)
        self.assertEqual(decoder.buffered, 0)


class MalformedInputTests(SynchronousTestCase):
    def assertFatal(self, data: bytes, reason: str) -> NECPError:
        decoder = Decoder()
        decoder.feed(data)
        error = self.assertRaises(NECPError, decoder.next_message)
        self.assertNotIsInstance(error, MessageRefused)
        self.assertIn(reason, str(error))
        # A broken stream stays broken, and holds nothing.
        self.assertEqual(decoder.buffered, 0)
        self.assertRaises(NECPError, decoder.feed, WORKED_KEEPALIVE)
        return error

    def test_wrong_protocol_id_is_refused_from_the_header_alone(self):
        self.assertFatal(header(protocol_id=0x4149), "protocol id 0x4149")

    def test_oversized_payload_length_is_refused_before_the_payload_arrives(self):
        self.assertFatal(header(length=MAX_PAYLOAD + 1), "over the limit")

    def test_largest_allowed_payload_is_buffered_until_complete(self):
        decoder = Decoder()
        data = header(opcode=Opcode.START, flags=Flag.BASIC_PAYLOAD, length=MAX_PAYLOAD)
        decoder.feed(data)
        self.assertIsNone(decoder.next_message())

    def test_length_not_a_multiple_of_32_is_refused(self):
        data = header(opcode=Opcode.START, flags=Flag.BASIC_PAYLOAD, length=33) + bytes(33)
        self.assertFatal(data, "not a whole number")

    def test_payload_without_basic_payload_flag_is_refused(self):
        data = header(opcode=Opcode.START, length=32) + bytes(32)
        self.assertFatal(data, "without the basic-payload flag")

    def test_init_with_two_units_is_refused(self):
        data = header(opcode=Opcode.INIT, flags=Flag.BASIC_PAYLOAD, length=64) + bytes(64)
        self.assertFatal(data, "exactly one unit")

    def test_init_without_a_unit_is_refused(self):
        self.assertFatal(header(opcode=Opcode.INIT), "exactly one unit")

    def test_start_ack_with_units_is_refused(self):
        data = header(opcode=Opcode.START_ACK, flags=Flag.BASIC_PAYLOAD, length=32) + bytes(32)
        self.assertFatal(data, "no payload")

    def test_health_over_100_is_refused(self):
        payload = UNIT.pack(1, 6, 80, 101, 0, 0, 0, 0)
        data = header(opcode=Opcode.KEEPALIVE_ACK, flags=Flag.BASIC_PAYLOAD, length=32) + payload
        self.assertFatal(data, "health index 101")

    def test_credential_flag_with_too_short_payload_is_refused(self):
        data = header(flags=Flag.CREDENTIAL, length=4) + bytes(4)
        decoder = Decoder(Authenticator(b"secret"))
        decoder.feed(data)
        error = self.assertRaises(NECPError, decoder.next_message)
        self.assertIn("too short for a credential", str(error))

    def test_truncated_message_waits_in_the_decoder(self):
        decoder = Decoder()
        decoder.feed(WORKED_KEEPALIVE[:-1])
        self.assertIsNone(decoder.next_message())
        self.assertEqual(decoder.buffered, len(WORKED_KEEPALIVE) - 1)

    def test_truncated_message_is_an_error_for_one_shot_decode(self):
        error = self.assertRaises(NECPError, decode, WORKED_KEEPALIVE[:-1])
        self.assertIn("truncated", str(error))

    def test_trailing_bytes_are_an_error_for_one_shot_decode(self):
        error = self.assertRaises(NECPError, decode, WORKED_KEEPALIVE + b"\x41")
        self.assertIn("1 bytes after", str(error))

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(st.binary(max_size=400), st.integers(1, 64))
    def test_arbitrary_bytes_raise_only_necp_error_and_stay_bounded(self, data, chunk):
        decoder = Decoder(Authenticator(b"key", required=False))
        try:
            for start in range(0, len(data), chunk):
                decoder.feed(data[start : start + chunk])
                while True:
                    try:
                        if decoder.next_message() is None:
                            break
                    except MessageRefused:
                        continue
                self.assertLessEqual(decoder.buffered, MAX_MESSAGE_SIZE)
        except NECPError:
            pass

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(messages, st.data())
    def test_corrupted_messages_raise_only_necp_error(self, message, data):
        encoded = bytearray(encode(message))
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] ^= data.draw(st.integers(1, 255))
        decoder = Decoder()
        decoder.feed(bytes(encoded))
        try:
            drain(decoder)
        except NECPError:
            pass

    def test_decoder_holds_at_most_one_incomplete_message(self):
        decoder = Decoder()
        for _ in range(100):
            decoder.feed(WORKED_KEEPALIVE)
            drain(decoder)
        self.assertEqual(decoder.buffered, 0)


class RefusedMessageTests(SynchronousTestCase):
    """Whole messages that are refused while the stream stays usable."""

    def refuse(self, data: bytes, kind, decoder=None) -> MessageRefused:
        decoder = decoder or Decoder()
        decoder.feed(data + WORKED_KEEPALIVE)
        refusal = self.assertRaises(kind, decoder.next_message)
        self.assertEqual(decoder.next_message().request_id, 2, "stream lost its step")
        return refusal

    def test_other_version_is_refused_with_its_header_fields(self):
        data = header(version=2, opcode=Opcode.START, request_id=9, length=32, flags=1)
        refusal = self.refuse(data + bytes(32), UnsupportedVersion)
        self.assertEqual(
            (refusal.version, refusal.opcode, refusal.request_id), (2, Opcode.START, 9)
        )
        self.assertEqual(refusal.reply_flags, Flag.ERROR | Flag.VERSION_MISMATCH)

    def test_reserved_opcode_is_refused(self):
        for opcode in (0x09, 0x1F, 0x28, 0xFF):
            refusal = self.refuse(header(opcode=opcode, request_id=5), ReservedOpcode)
            self.assertEqual((refusal.opcode, refusal.request_id), (opcode, 5))
            self.assertEqual(refusal.reply_flags, Flag.ERROR)

    def test_reserved_opcode_with_error_flag_reads_as_an_error_reply(self):
        message = decode(header(opcode=0x30, flags=Flag.ERROR, request_id=1))
        self.assertEqual(message, ErrorReply(opcode=0x30, request_id=1))


class CredentialTests(SynchronousTestCase):
    secret = b"shared secret"

    def pair(self, first=7 << 32):
        sender, receiver = Authenticator(self.secret), Authenticator(self.secret)
        sender.start_sending(first)
        receiver.start_receiving(first)
        return sender, Decoder(receiver)

    def test_credential_is_hmac_sha1_over_header_with_flag_and_length_and_payload(self):
        message = Keepalive(request_id=2, queries=(Query.health(6, 80),))
        signed = Authenticator(self.secret).encode(message, 0)
        body = bytearray(WORKED_KEEPALIVE)
        struct.pack_into(">H", body, 2, Flag.BASIC_PAYLOAD | Flag.CREDENTIAL)
        struct.pack_into(">I", body, 16, 32 + 20)
        expected = hmac.new(self.secret, bytes(body), hashlib.sha1).digest()
        self.assertEqual(signed, bytes(body) + expected)

    def test_wrong_secret_is_refused(self):
        sender = Authenticator(b"another secret")
        decoder = Decoder(Authenticator(self.secret))
        decoder.feed(sender.encode(Start(request_id=3), 0))
        refusal = self.assertRaises(AuthenticationFailed, decoder.next_message)
        self.assertEqual(refusal.reply_flags, Flag.ERROR | Flag.AUTH_REQUIRED)
        self.assertEqual(refusal.request_id, 3)

    def test_tampered_payload_is_refused(self):
        sender, decoder = self.pair()
        data = bytearray(sender.encode(Start(services=(Service(1, 6, 80),)), 0))
        data[HEADER_SIZE + 11] = 81
        decoder.feed(bytes(data))
        self.assertRaises(AuthenticationFailed, decoder.next_message)

    def test_missing_credential_is_refused_when_required(self):
        decoder = Decoder(Authenticator(self.secret, required=True))
        decoder.feed(encode(Init()))
        refusal = self.assertRaises(AuthenticationFailed, decoder.next_message)
        self.assertIn("credential missing", str(refusal))

    def test_credential_without_a_configured_secret_is_refused(self):
        decoder = Decoder()
        decoder.feed(Authenticator(self.secret).encode(Init(authenticate=True), 0))
        refusal = self.assertRaises(AuthenticationFailed, decoder.next_message)
        self.assertIn("no shared secret", str(refusal))

    def test_replayed_message_is_refused(self):
        sender, decoder = self.pair()
        data = sender.encode(Stop(request_id=1), 0)
        decoder.feed(data)
        self.assertEqual(decoder.next_message(), Stop(request_id=1))
        decoder.feed(data)
        refusal = self.assertRaises(BadSequenceNumber, decoder.next_message)
        self.assertEqual(refusal.reply_flags, Flag.ERROR | Flag.BAD_SEQUENCE)

    def test_reordered_message_is_refused(self):
        sender, decoder = self.pair()
        first, second = sender.encode(Noop(), 0), sender.encode(Noop(), 0)
        decoder.feed(second)
        decoder.next_message()
        decoder.feed(first)
        refusal = self.assertRaises(BadSequenceNumber, decoder.next_message)
        self.assertIn("below the lowest acceptable", str(refusal))

    def test_number_below_the_one_asked_for_is_refused(self):
        receiver = Authenticator(self.secret)
        receiver.start_receiving(100)
        self.assertIsNotNone(receiver.accept_sequence(99))
        self.assertIsNone(receiver.accept_sequence(100))

    def test_first_message_carries_exactly_the_number_asked_for(self):
        sender = Authenticator(self.secret)
        sender.start_sending(5)
        self.assertEqual(sender.next_sequence(now=1_000_000), 5)

    def test_later_numbers_take_the_clock_in_the_high_half_and_count_in_the_low(self):
        sender = Authenticator(self.secret)
        sender.start_sending(5)
        sender.next_sequence(now=0)
        self.assertEqual(
            [sender.next_sequence(now) for now in (10, 10.5, 10.9, 11)],
            [10 << 32, (10 << 32) + 1, (10 << 32) + 2, 11 << 32],
        )

    def test_numbers_keep_increasing_when_the_clock_goes_back(self):
        sender = Authenticator(self.secret)
        sender.start_sending(0)
        numbers = [sender.next_sequence(now) for now in (0, 50, 40, 30)]
        self.assertEqual(numbers, sorted(set(numbers)))

    def test_before_the_peer_asks_messages_carry_zero(self):
        self.assertEqual(Authenticator(self.secret).next_sequence(now=123), 0)

    def test_empty_secret_is_refused(self):
        self.assertRaises(NECPError, Authenticator, b"")


class EncodingErrorTests(SynchronousTestCase):
    def test_values_that_do_not_fit_their_fields_are_refused(self):
        for message in (
            Start(services=(Service(1, 256, 80),)),
            Keepalive(queries=(Query(1, 6, 65536),)),
            KeepaliveAck(answers=(Answer(1, 6, 80, 101),)),
            Noop(request_id=0x10000),
            Init(authenticate=True, receive_sequence=-1),
            ExceptionAdd(rules=(ExceptionRule(source="10.0.0.1"),)),
        ):
            self.assertRaises(NECPError, encode, message)

    def test_too_many_units_are_refused(self):
        message = Start(services=(Service(1, 6, 80),) * (MAX_PAYLOAD // 32 + 1))
        error = self.assertRaises(NECPError, encode, message)
        self.assertIn("exceed the limit", str(error))


class CapacityExtensionTests(SynchronousTestCase):
    """The project's capacity query: INIT data0 bit 0x2, query type 0x100, milli-CPUs in data3."""

    def test_init_announcing_capacity_sets_data0_bit_2_beside_authentication(self):
        fields = UNIT.unpack(encode(Init(answers_capacity=True))[HEADER_SIZE:])
        self.assertEqual(fields, (2, 0, 0, 0, 0, 0, 0, 0))
        fields = UNIT.unpack(encode(Init(authenticate=True, answers_capacity=True, receive_sequence=7))[HEADER_SIZE:])
        self.assertEqual(fields[0], 3)

    def test_init_with_the_capacity_bit_decodes_as_announcing_it(self):
        data = header(opcode=Opcode.INIT, flags=Flag.BASIC_PAYLOAD, length=32) + UNIT.pack(2, 0, 0, 0, 0, 0, 0, 0)
        self.assertEqual(decode(data), Init(answers_capacity=True))

    def test_init_bits_nobody_defines_are_ignored(self):
        data = header(opcode=Opcode.INIT, flags=Flag.BASIC_PAYLOAD, length=32) + UNIT.pack(0xFFF8, 0, 0, 0, 0, 0, 0, 0)
        self.assertEqual(decode(data), Init())

    def test_capacity_query_layout(self):
        fields = UNIT.unpack(encode(Keepalive(queries=(Query.capacity(6, 80),)))[HEADER_SIZE:])
        self.assertEqual(fields, (0x100, 6, 80, 0, 0, 0, 0, 0))
        self.assertEqual(CAPACITY_QUERY, 0x100)

    def test_capacity_answer_carries_milli_cpus_in_data3(self):
        message = KeepaliveAck(answers=(Answer(1, 6, 80, 75), Answer(CAPACITY_QUERY, 6, 80, 250)))
        data = encode(message)
        self.assertEqual(UNIT.unpack(data[HEADER_SIZE + UNIT_SIZE :]), (0x100, 6, 80, 250, 0, 0, 0, 0))
        self.assertEqual(decode(data), message)

    def test_capacity_over_the_maximum_is_not_encoded(self):
        error = self.assertRaises(NECPError, encode, KeepaliveAck(answers=(Answer(CAPACITY_QUERY, 6, 80, MAX_CAPACITY + 1),)))
        self.assertIn("answer", str(error))
        encode(KeepaliveAck(answers=(Answer(CAPACITY_QUERY, 6, 80, MAX_CAPACITY),)))

    def test_capacity_over_the_maximum_is_refused_on_decoding(self):
        payload = UNIT.pack(CAPACITY_QUERY, 6, 80, MAX_CAPACITY + 1, 0, 0, 0, 0)
        data = header(opcode=Opcode.KEEPALIVE_ACK, flags=Flag.BASIC_PAYLOAD, length=32) + payload
        decoder = Decoder()
        decoder.feed(data)
        error = self.assertRaises(NECPError, decoder.next_message)
        self.assertNotIsInstance(error, MessageRefused)
        self.assertIn(f"capacity {MAX_CAPACITY + 1} milli-CPUs", str(error))
