"""Personal data kept out of free text: phones, ID-card numbers and e-mail addresses become fixed marks
in the normalized Report (and so in every derived topic and ClickHouse), while the raw topics keep the original."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.serde import Serde, from_record
from streams.domain.model import HotlineTicket, ResidentReport
from streams.domain.normalize import normalize_app_report, normalize_hotline
from streams.domain.pii import PersonalDataHasher
from streams.domain.redact import id_card_is_valid, redact
from streams.domain.reference import load_reference
from streams.domain.trusted_time import SkewBounds
from streams.pipeline import Ingestor, Senders
from whistle.devtools.feed import NAMESPACE, Signers
from whistle.ground.deadletter import Position
from whistle.ground.names import Topics
from whistle.ground.settings import Settings

VALID_ID = "430102199001011238"  # check character 8 (ISO 7064 MOD 11-2)
INVALID_ID = "430102199001011234"  # same number, wrong check character
AT = datetime(2026, 6, 8, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize("text, expected, kinds", [
    ("请回电 137 0731 2288 张三", "请回电 [电话] 张三", ("mobile",)),
    ("请回电13707312288张三", "请回电[电话]张三", ("mobile",)),
    ("电话:137-0731-2288。", "电话:[电话]。", ("mobile",)),
    ("+86 137 0731 2288", "[电话]", ("mobile",)),
    ("联系 +86-13707312288 或 0086 13707312288 或 (+86)13707312288 或 8613707312288", "联系 [电话] 或 [电话] 或 [电话] 或 [电话]", ("mobile",)),
    ("请回电 １３７ ０７３１ ２２８８，谢谢", "请回电 [电话]，谢谢", ("mobile",)),  # full-width digits and comma; the comma stays
    ("手机１３７－０７３１－２２８８", "手机[电话]", ("mobile",)),
    ("联系 0731-88776655", "联系 [电话]", ("landline",)),
    ("座机(0731)88776655转总机", "座机[电话]转总机", ("landline",)),
    ("座机（０７３１）８８７７６６５５", "座机[电话]", ("landline",)),
    ("打 0731 8877 6655 或 010-62345678 或 020-1234567", "打 [电话] 或 [电话] 或 [电话]", ("landline",)),
    (f"身份证 {VALID_ID}", "身份证 [身份证]", ("id_card",)),
    ("身份证11010519491231002X号", "身份证[身份证]号", ("id_card",)),
    ("身份证 11010519491231002x", "身份证 [身份证]", ("id_card",)),
    ("身份证 430102 19900101 1238", "身份证 [身份证]", ("id_card",)),
    ("身份证 ４３０１０２１９９００１０１１２３８", "身份证 [身份证]", ("id_card",)),
    (f"身份证 {INVALID_ID}", f"身份证 {INVALID_ID}", ()),  # check character wrong: not an ID number, left readable
    ("mail me at a.b@example.cn", "mail me at [邮箱]", ("email",)),
    ("邮箱ｚｈａｎｇ．ｓａｎ＠ｑｑ．ｃｏｍ。", "邮箱[邮箱]。", ("email",)),
    ("邮箱 13707312288@163.com", "邮箱 [邮箱]", ("email",)),
    (f"张三 {VALID_ID} 13707312288 0731-88776655 z@x.org", "张三 [身份证] [电话] [电话] [邮箱]", ("mobile", "landline", "id_card", "email")),
])
def test_personal_data_in_free_text_becomes_a_mark(text, expected, kinds):
    assert redact(text) == (expected, kinds)


@pytest.mark.parametrize("text", [
    "垃圾没人清运，已经三天了",
    "建设路19号3栋2单元门口有积水",
    "订单号 20261206123456789 的快递丢在楼下",  # a 17-digit order number
    "运单 20261206123456789012",  # 20 digits
    f"工单 {INVALID_ID[:-1]}5",  # 18 digits, wrong check character
    "430102202613451239",  # the right check character for its digits, but no such birth date (month 13)
    "2026-12-06 上午 10:30 开始施工",  # a date and a time
    "位置 28.1913707312288, 113.1370731228",  # coordinates with phone-like decimals
    "坐标(28.19137, 113.0731)",
    "井盖编号 1370731228 松动",  # 10 digits: no mobile
    "第 137073122880 号",  # 12 digits: no mobile
    "金额 1234.56 元，面积 0.5 平方米",
    "model gv-3.2 on CAM-007",
    "",
])
def test_text_without_personal_data_is_unchanged(text):
    assert redact(text) == (text, ())


def test_the_id_check_rule():
    assert id_card_is_valid(VALID_ID) and id_card_is_valid("11010519491231002X") and id_card_is_valid("11010519491231002x")
    assert not id_card_is_valid(INVALID_ID) and not id_card_is_valid("430102202613451239") and not id_card_is_valid(VALID_ID[:-1])
    ids = [f"43010219900101{n:03d}" for n in range(1000)]
    assert sum(any(id_card_is_valid(i + c) for c in "0123456789X") for i in ids) == 1000  # every number has one check character


HASHER = PersonalDataHasher("test-key")


def test_normalize_redacts_description_and_address_of_every_channel():
    ref = load_reference()
    ticket = from_record(HotlineTicket, {"ticket_id": "T-1", "received_at": AT, "caller_phone": "13812345678", "address_text": "建设路19号 电话0731-88776655",
                                         "description": "请回电 137 0731 2288 张三", "operator_category": "garbage", "urgency": "normal"})
    report = normalize_hotline(ticket, ref, HASHER.phone, "hotline-12345")
    assert (report.description, report.address_text) == ("请回电 [电话] 张三", "建设路19号 电话[电话]")
    app = from_record(ResidentReport, {"report_id": "r-1", "reporter_id": "wx-1", "reporter_role": "resident", "reported_at": AT, "lat": 28.19,
                                       "lon": 113.1, "category": "noise", "description": f"我是业主，身份证{VALID_ID}", "photo_refs": [],
                                       "address_text": "a.b@example.cn"})
    report = normalize_app_report(app, ref, HASHER.reporter, "resident-app")
    assert (report.description, report.address_text) == ("我是业主，身份证[身份证]", "[邮箱]")


@pytest.mark.parametrize("source", ["hotline", "app"])
def test_the_case_stream_carries_the_redacted_text_and_the_raw_record_the_original(source):
    serde, topics, reference = Serde(), Topics(), load_reference()
    ingest = Ingestor(serde, reference, PersonalDataHasher("k"), topics, Senders.from_settings(Settings(), reference), SkewBounds.of_seconds(300, 86_400))
    description = "请回电 137 0731 2288 张三，楼道垃圾"
    if source == "hotline":
        raw = serde.encode("HotlineTicket", {"ticket_id": "T-9", "received_at": AT, "caller_phone": "+86 138 1234 5678", "address_text": "建设路19号",
                                             "description": description, "operator_category": "garbage", "urgency": "normal"})
        topic, sender = "whistle.raw.hotline", "hotline-12345"
    else:
        ring = reference.grids["G-S03-C02-003"].ring[:-1]
        lat, lon = sum(y for _, y in ring) / len(ring), sum(x for x, _ in ring) / len(ring)
        report = {"report_id": "r-9", "reporter_id": "wx-9", "reporter_role": "resident", "reported_at": AT, "lat": lat, "lon": lon,
                  "category": "garbage", "description": description, "photo_refs": [], "address_text": "建设路19号"}
        raw = serde.encode("AppEvent", {"event": (f"{NAMESPACE}.ResidentReport", report)})
        topic, sender = "whistle.raw.app", "resident-app"
    routed = ingest.process(Position(topic, 0, 0), b"k", raw, AT, arrived=AT, headers=Signers(Settings())(sender).headers(topic, b"k", raw))
    assert routed.topic == topics.inbox
    _, enriched = serde.decode(routed.value).record["event"]
    assert enriched["description"] == "请回电 [电话] 张三，楼道垃圾" and enriched["location_grid_id"] is not None
    for written in ("13707312288", "137 0731 2288"):
        assert written.encode() not in routed.value
    raw_record = serde.decode(raw).record
    assert (raw_record if source == "hotline" else raw_record["event"][1])["description"] == description  # the raw topic keeps the original
