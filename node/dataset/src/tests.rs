use super::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory of its own under the system temp dir, deleted on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lgsp-dataset-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn store(&self) -> DatasetStore {
        DatasetStore::new(&self.0.join("datasets"))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn no_progress(_: u64, _: u64) {}

fn bad_rows(err: DatasetError) -> (Vec<BadRow>, usize) {
    match err {
        DatasetError::BadRows {
            rows, total_bad, ..
        } => (rows, total_bad),
        other => panic!("expected bad rows, got {other}"),
    }
}

fn all_pages(dataset: &Dataset, mut q: Query) -> Vec<(String, String)> {
    let mut all = Vec::new();
    loop {
        let page = dataset.query(&q).unwrap();
        all.extend(page.records);
        if page.resume_token.is_empty() {
            return all;
        }
        q.resume_token = page.resume_token;
    }
}

const HO_TICH_CSV: &str = "so_dinh_danh,ho_ten,que_quan,ghi_chu\n\
001,Nguyễn Thị Ánh,\"Xã Đông Hưng, huyện Đông Hưng, tỉnh Thái Bình\",\n\
002,Trần Văn Đức,Phường Trưng Vương,\"Nói: \"\"Được\"\"\"\n\
003,Lê Hoàng Yến,\"Thị trấn Tam Đảo\nVĩnh Phúc\",ổ bánh mì ở Hội An\n";

#[test]
fn csv_with_vietnamese_values_round_trips_byte_exact() {
    let dir = TestDir::new();
    let file = dir.file("ho-tich.csv", HO_TICH_CSV.as_bytes());
    let store = dir.store();
    let seen = std::cell::RefCell::new(Vec::new());
    let report = store
        .import("ho-tich", &file, "so_dinh_danh", None, &|done, total| {
            seen.borrow_mut().push((done, total))
        })
        .unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.bytes, HO_TICH_CSV.len() as u64);
    assert_eq!(report.generation, "gen-1");
    // Progress: the file read to its end, then the records written in key
    // order, from 0 to all of them.
    let seen = seen.into_inner();
    let restart = seen
        .iter()
        .rposition(|&(done, _)| done == 0)
        .filter(|&i| i > 0)
        .expect("the second part starts from 0");
    assert_eq!(seen[restart - 1], (report.bytes, report.bytes), "{seen:?}");
    let (written, total) = *seen.last().unwrap();
    assert!(written == total && total > 0, "{seen:?}");

    let dataset = store.open("ho-tich").unwrap();
    assert_eq!(dataset.len(), 3);
    assert_eq!(dataset.key_field(), "so_dinh_danh");
    let record = dataset.get("001").unwrap().unwrap();
    assert_eq!(record["ho_ten"], "Nguyễn Thị Ánh");
    assert_eq!(
        record["que_quan"],
        "Xã Đông Hưng, huyện Đông Hưng, tỉnh Thái Bình"
    );
    assert_eq!(record["ghi_chu"], "");
    assert_eq!(
        dataset.get("002").unwrap().unwrap()["ghi_chu"],
        "Nói: \"Được\""
    );
    assert_eq!(
        dataset.get("003").unwrap().unwrap()["que_quan"],
        "Thị trấn Tam Đảo\nVĩnh Phúc"
    );
    assert_eq!(dataset.get("004").unwrap(), None);

    // Stored text: header order, diacritics as UTF-8 (not \u escapes).
    let expected = r#"{"so_dinh_danh":"003","ho_ten":"Lê Hoàng Yến","que_quan":"Thị trấn Tam Đảo\nVĩnh Phúc","ghi_chu":"ổ bánh mì ở Hội An"}"#;
    assert_eq!(dataset.get_json("003").unwrap().unwrap(), expected);
    let all = all_pages(&dataset, Query::default());
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], ("003".to_owned(), expected.to_owned()));
    // A filter value with diacritics matches byte for byte.
    let page = dataset
        .query(&Query {
            filters: vec![("ho_ten".into(), "Trần Văn Đức".into())],
            fields: vec!["ho_ten".into()],
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        page.records,
        [("002".into(), r#"{"ho_ten":"Trần Văn Đức"}"#.into())]
    );
}

#[test]
fn json_lines_import_keeps_order_types_and_skips_blank_lines() {
    let dir = TestDir::new();
    let file = dir.file(
        "dan-cu.ndjson",
        "{\"ma\":10,\"ten\":\"Phạm Minh Châu\",\"tuoi\":34,\"dang_vien\":true}\n\
         \n\
         {\"ten\":\"Đỗ Quỳnh\",\"ma\":9,\"dia_chi\":{\"tinh\":\"Hà Giang\"}}\r\n"
            .as_bytes(),
    );
    let store = dir.store();
    let report = store
        .import("dan-cu", &file, "ma", None, &no_progress)
        .unwrap();
    assert_eq!(report.records, 2);
    let dataset = store.open("dan-cu").unwrap();
    assert_eq!(
        dataset.get_json("10").unwrap().unwrap(),
        r#"{"ma":10,"ten":"Phạm Minh Châu","tuoi":34,"dang_vien":true}"#
    );
    let nine = dataset.get("9").unwrap().unwrap();
    assert_eq!(nine["dia_chi"]["tinh"], "Hà Giang");
    assert!(
        dataset
            .get_json("9")
            .unwrap()
            .unwrap()
            .starts_with(r#"{"ten":"Đỗ Quỳnh","ma":9"#)
    );
    assert_eq!(
        dataset.fields().unwrap(),
        ["ma", "ten", "tuoi", "dang_vien", "dia_chi"]
    );
    // Non-string values are compared as their JSON text.
    let page = dataset
        .query(&Query {
            filters: vec![("dang_vien".into(), "true".into())],
            ..Query::default()
        })
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].0, "10");
}

const SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "ma": {"type": "string", "maxLength": 4},
    "ten": {"type": "string"},
    "gioi_tinh": {"type": "string", "enum": ["Nam", "Nữ"]},
    "nam_sinh": {"type": "integer"}
  },
  "required": ["ma", "ten"],
  "additionalProperties": false
}"#;

#[test]
fn schema_violations_are_reported_by_line_and_nothing_is_imported() {
    let dir = TestDir::new();
    let store = dir.store();
    let schema = Schema::from_json(SCHEMA).unwrap();
    let good = dir.file(
        "v1.csv",
        "ma,ten,gioi_tinh,nam_sinh\nA1,Hà Thị Lan,Nữ,1990\n".as_bytes(),
    );
    store
        .import("nhan-su", &good, "ma", Some(&schema), &no_progress)
        .unwrap();

    let bad = dir.file(
        "v2.jsonl",
        "{\"ma\":\"B1\",\"ten\":\"Vũ An\",\"gioi_tinh\":\"Nam\",\"nam_sinh\":1985}\n\
         {\"ma\":\"B2\",\"gioi_tinh\":\"Nam\"}\n\
         {\"ma\":\"B3\",\"ten\":\"Tạ Bình\",\"nam_sinh\":\"1985\"}\n\
         {\"ma\":\"B4-DÀI\",\"ten\":\"Ông Ích Khiêm\",\"gioi_tinh\":\"nam\"}\n\
         {\"ma\":\"B5\",\"ten\":\"Lò Văn Pá\",\"dan_toc\":\"Thái\"}\n\
         {\"ten\":\"Không có mã\"}\n"
            .as_bytes(),
    );
    let err = store
        .import("nhan-su", &bad, "ma", Some(&schema), &no_progress)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("5 bad rows in "), "{text}");
    assert!(
        text.contains("; nothing was imported\n  line 2: "),
        "{text}"
    );
    let (rows, total) = bad_rows(err);
    assert_eq!(total, 5);
    let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6]);
    assert!(
        rows[0].why.contains("missing required field \"ten\""),
        "{}",
        rows[0].why
    );
    assert!(
        rows[1]
            .why
            .contains("\"nam_sinh\" is \"1985\" but must be an integer"),
        "{}",
        rows[1].why
    );
    assert!(
        rows[2].why.contains("more than maxLength 4"),
        "{}",
        rows[2].why
    );
    assert!(
        rows[2].why.contains("not one of \"Nam\", \"Nữ\""),
        "{}",
        rows[2].why
    );
    assert!(
        rows[3].why.contains("unknown field \"dan_toc\""),
        "{}",
        rows[3].why
    );
    assert!(
        rows[4].why.contains("missing key field \"ma\""),
        "{}",
        rows[4].why
    );

    // The first import is still served; the failed one left nothing behind.
    let dataset = store.open("nhan-su").unwrap();
    assert_eq!(dataset.generation(), "gen-1");
    assert_eq!(dataset.get("A1").unwrap().unwrap()["nam_sinh"], 1990);
    assert_eq!(dataset.get("B1").unwrap(), None);
    let mut left: Vec<String> = std::fs::read_dir(store.root().join("nhan-su"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["CURRENT", "gen-1"]);
}

#[test]
fn csv_cells_are_typed_by_the_schema() {
    let dir = TestDir::new();
    let store = dir.store();
    let schema = Schema::from_json(SCHEMA).unwrap();
    let file = dir.file(
        "nhan-su.csv",
        "ma,ten,nam_sinh\nC1,Mạc Thị Bưởi,1932\nC2,Bế Văn Đàn,\nC3,Kim Đồng,mười\n".as_bytes(),
    );
    let (rows, _) = bad_rows(
        store
            .import("nhan-su", &file, "ma", Some(&schema), &no_progress)
            .unwrap_err(),
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].line, 4);
    assert!(
        rows[0]
            .why
            .contains("\"nam_sinh\" is \"mười\" but must be an integer"),
        "{}",
        rows[0].why
    );

    let file = dir.file(
        "nhan-su.csv",
        "ma,ten,nam_sinh\nC1,Mạc Thị Bưởi,1932\nC2,Bế Văn Đàn,\n".as_bytes(),
    );
    store
        .import("nhan-su", &file, "ma", Some(&schema), &no_progress)
        .unwrap();
    let dataset = store.open("nhan-su").unwrap();
    assert_eq!(
        dataset.get_json("C1").unwrap().unwrap(),
        r#"{"ma":"C1","ten":"Mạc Thị Bưởi","nam_sinh":1932}"#
    );
    // An empty cell of a non-string field is no value.
    assert_eq!(
        dataset.get_json("C2").unwrap().unwrap(),
        r#"{"ma":"C2","ten":"Bế Văn Đàn"}"#
    );
    assert!(dataset.schema().is_some());
}

#[test]
fn header_problems_are_reported_on_line_one() {
    let dir = TestDir::new();
    let store = dir.store();
    let schema = Schema::from_json(SCHEMA).unwrap();
    let file = dir.file("x.csv", "ma,ho_ten\nA,B\n".as_bytes());
    let (rows, _) = bad_rows(
        store
            .import("x", &file, "ma", Some(&schema), &no_progress)
            .unwrap_err(),
    );
    assert_eq!(rows[0].line, 1);
    assert!(
        rows[0]
            .why
            .contains("required field \"ten\" is not a column")
    );
    assert!(
        rows[0]
            .why
            .contains("column \"ho_ten\" is not in the schema")
    );

    let (rows, _) = bad_rows(
        store
            .import("x", &file, "id", None, &no_progress)
            .unwrap_err(),
    );
    assert!(
        rows[0]
            .why
            .contains("the key field \"id\" is not a column; the columns are: ma, ho_ten"),
        "{}",
        rows[0].why
    );
    // A spreadsheet's byte order mark is not part of the first column's name.
    let file = dir.file("bom.csv", b"\xEF\xBB\xBFma,ten\nA,B\n");
    store.import("x", &file, "ma", None, &no_progress).unwrap();
}

#[test]
fn duplicate_keys_name_both_lines() {
    let dir = TestDir::new();
    let store = dir.store();
    let file = dir.file(
        "dat-dai.csv",
        "thua,chu\n12,An\n13,Bình\n12,Cường\n14,Dũng\n13,Em\n".as_bytes(),
    );
    let (rows, total) = bad_rows(
        store
            .import("dat-dai", &file, "thua", None, &no_progress)
            .unwrap_err(),
    );
    assert_eq!(total, 2);
    assert_eq!(
        rows,
        [
            BadRow {
                line: 4,
                why: "duplicate key \"12\", first on line 2".into()
            },
            BadRow {
                line: 6,
                why: "duplicate key \"13\", first on line 3".into()
            },
        ]
    );
    assert!(matches!(
        store.open("dat-dai"),
        Err(DatasetError::NotFound { .. })
    ));
    assert_eq!(store.current_generation("dat-dai"), None);

    // A row with another problem is still checked for a repeated key.
    let schema = Schema::from_json(SCHEMA).unwrap();
    let file = dir.file(
        "nhan-su.csv",
        "ma,ten,nam_sinh\nD1,Ánh,1990\nD1,Ánh,một\n".as_bytes(),
    );
    let (rows, _) = bad_rows(
        store
            .import("nhan-su", &file, "ma", Some(&schema), &no_progress)
            .unwrap_err(),
    );
    assert_eq!(
        rows[0].why,
        "field \"nam_sinh\" is \"một\" but must be an integer; \
         duplicate key \"D1\", first on line 2"
    );
}

#[test]
fn torn_and_malformed_rows_are_reported_by_line() {
    let dir = TestDir::new();
    let store = dir.store();
    let csv = dir.file(
        "torn.csv",
        b"ma,ten,xa\n1,An,Xu\xC3\xA2n La\n2,B\xECnh,X\n3,Ch\xC3\xA2u,Y,Z\n4,\"Dung,Tam \xC4\x90\xE1\xBA\xA3o\n",
    );
    let (rows, total) = bad_rows(
        store
            .import("x", &csv, "ma", None, &no_progress)
            .unwrap_err(),
    );
    assert_eq!(total, 3, "{rows:?}");
    assert_eq!(rows[0].line, 3);
    assert!(
        rows[0].why.contains("\"ten\" is not valid UTF-8"),
        "{}",
        rows[0].why
    );
    assert_eq!(rows[1].line, 4);
    assert!(
        rows[1].why.contains("4 fields where the header has 3"),
        "{}",
        rows[1].why
    );
    // The unclosed quote would swallow the rest of the file.
    assert_eq!(rows[2].line, 5);
    assert!(
        rows[2]
            .why
            .contains("quote opened on line 5 is never closed"),
        "{}",
        rows[2].why
    );

    let jsonl = dir.file(
        "torn.jsonl",
        "{\"ma\":1}\n[1,2]\n{\"ma\":3,\"ma\":4}\n{\"ma\":5,\"ten\":\"Nguy".as_bytes(),
    );
    let (rows, _) = bad_rows(
        store
            .import("x", &jsonl, "ma", None, &no_progress)
            .unwrap_err(),
    );
    let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 3, 4]);
    assert!(
        rows[0].why.starts_with("not a JSON object"),
        "{}",
        rows[0].why
    );
    assert!(
        rows[1].why.contains("\"ma\" appears twice"),
        "{}",
        rows[1].why
    );
    assert!(rows[2].why.contains("EOF"), "{}", rows[2].why);
    assert_eq!(store.current_generation("x"), None);
}

#[test]
fn at_most_a_hundred_bad_rows_are_listed_but_all_are_counted() {
    let dir = TestDir::new();
    let mut text = String::from("ma,ten\n");
    for i in 0..250 {
        text.push_str(&format!(",người {i}\n"));
    }
    let file = dir.file("empty-keys.csv", text.as_bytes());
    let err = dir
        .store()
        .import("x", &file, "ma", None, &no_progress)
        .unwrap_err();
    assert!(err.to_string().ends_with("\n  ... and 150 more"));
    let (rows, total) = bad_rows(err);
    assert_eq!((rows.len(), total), (MAX_BAD_ROWS, 250));
    assert_eq!(rows[99].line, 101);
}

#[test]
fn reimport_switches_atomically_and_open_handles_keep_working() {
    let dir = TestDir::new();
    let store = dir.store();
    let v1 = dir.file("v1.csv", "ma,ten\n1,Cũ\n2,Cũ hai\n".as_bytes());
    let v2 = dir.file("v2.csv", "ma,ten\n1,Mới\n3,Mới ba\n".as_bytes());
    store
        .import("so-lieu", &v1, "ma", None, &no_progress)
        .unwrap();
    let cache = DatasetCache::new(store.clone());
    let before = store.open("so-lieu").unwrap();
    let cached = cache.get("so-lieu").unwrap();
    assert_eq!(cached.generation(), "gen-1");

    let report = store
        .import("so-lieu", &v2, "ma", None, &no_progress)
        .unwrap();
    assert_eq!(report.generation, "gen-2");
    assert_eq!(
        store.current_generation("so-lieu").as_deref(),
        Some("gen-2")
    );
    // The old generation is kept for rollback, and still readable through
    // handles opened before the switch.
    assert!(store.root().join("so-lieu/gen-1").exists());
    assert_eq!(before.get("2").unwrap().unwrap()["ten"], "Cũ hai");
    assert_eq!(all_pages(&before, Query::default()).len(), 2);

    std::thread::sleep(CACHE_RECHECK + Duration::from_millis(50));
    let fresh = cache.get("so-lieu").unwrap();
    assert_eq!(fresh.generation(), "gen-2");
    assert_eq!(fresh.get("1").unwrap().unwrap()["ten"], "Mới");
    assert_eq!(fresh.get("2").unwrap(), None);
    assert_eq!(cached.get("1").unwrap().unwrap()["ten"], "Cũ");
    // Opening the same generation again in this process shares the handle.
    assert_eq!(store.open("so-lieu").unwrap().generation(), "gen-2");

    // A failed third import leaves gen-2 serving.
    let bad = dir.file("v3.csv", "ma,ten\n1,X\n1,Y\n".as_bytes());
    store
        .import("so-lieu", &bad, "ma", None, &no_progress)
        .unwrap_err();
    assert_eq!(
        store.current_generation("so-lieu").as_deref(),
        Some("gen-2")
    );
    assert!(Arc::ptr_eq(&cache.get("so-lieu").unwrap(), &fresh));
    assert_eq!(store.services().unwrap(), ["so-lieu"]);
}

#[test]
fn projection_filter_and_paging_cover_every_record_exactly_once() {
    let dir = TestDir::new();
    let store = dir.store();
    let mut text = String::new();
    for i in 0..253 {
        let huyen = ["Tam Dương", "Lập Thạch", "Sông Lô"][i % 3];
        text.push_str(&format!(
            "{{\"ma\":\"{i:04}\",\"huyen\":\"{huyen}\",\"so_nhan_khau\":{},\"ten\":\"Hộ {i}\"}}\n",
            i % 7
        ));
    }
    let file = dir.file("ho.jsonl", text.as_bytes());
    let schema = Schema::from_json(
        r#"{"type":"object","properties":{"ma":{"type":"string"},"huyen":{"type":"string"},
            "so_nhan_khau":{"type":"integer"},"ten":{"type":"string"}},"required":["ma"]}"#,
    )
    .unwrap();
    store
        .import("ho", &file, "ma", Some(&schema), &no_progress)
        .unwrap();
    let dataset = store.open("ho").unwrap();

    let q = Query {
        page_size: 10,
        ..Query::default()
    };
    let first = dataset.query(&q).unwrap();
    assert_eq!(first.records.len(), 10);
    assert_eq!(first.resume_token, hex::encode("0009"));
    let all = all_pages(&dataset, q);
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    let unique: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!((keys.len(), unique.len()), (253, 253));
    assert!(keys.windows(2).all(|w| w[0] < w[1]));

    let filtered = all_pages(
        &dataset,
        Query {
            filters: vec![
                ("huyen".into(), "Sông Lô".into()),
                ("so_nhan_khau".into(), "3".into()),
            ],
            fields: vec!["ten".into(), "huyen".into()],
            page_size: 4,
            ..Query::default()
        },
    );
    let expected: Vec<(String, String)> = (0..253)
        .filter(|i| i % 3 == 2 && i % 7 == 3)
        .map(|i| {
            (
                format!("{i:04}"),
                format!(r#"{{"ten":"Hộ {i}","huyen":"Sông Lô"}}"#),
            )
        })
        .collect();
    assert_eq!(filtered, expected);

    // Exactly a full last page: the token says there is nothing more.
    let page = dataset
        .query(&Query {
            page_size: 3,
            resume_token: hex::encode("0249"),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(page.records.len(), 3);
    assert_eq!(page.resume_token, "");
    // Page sizes: 0 is the default, and no page is larger than the maximum.
    assert_eq!(dataset.query(&Query::default()).unwrap().records.len(), 100);
    let huge = Query {
        page_size: 5000,
        ..Query::default()
    };
    assert_eq!(dataset.query(&huge).unwrap().records.len(), 253);

    let err = dataset
        .query(&Query {
            filters: vec![("xa".into(), "Hợp Thịnh".into())],
            fields: vec!["ten".into(), "so_ho".into()],
            ..Query::default()
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("unknown field(s) xa, so_ho"), "{text}");
    assert!(matches!(
        dataset.query(&Query {
            resume_token: "not hex".into(),
            ..Query::default()
        }),
        Err(DatasetError::BadResumeToken(_))
    ));
}

#[test]
fn bad_names_extensions_and_missing_datasets_are_explained() {
    let dir = TestDir::new();
    let store = dir.store();
    let file = dir.file("data.xlsx", b"");
    let err = store
        .import("ho-tich", &file, "ma", None, &no_progress)
        .unwrap_err();
    assert!(err.to_string().contains("extension \".xlsx\""), "{err}");
    let csv = dir.file("data.csv", b"ma\n1\n");
    let err = store
        .import("../etc", &csv, "ma", None, &no_progress)
        .unwrap_err();
    assert!(matches!(err, DatasetError::BadName { .. }), "{err}");
    let err = store.open("khong-co").unwrap_err();
    assert!(
        err.to_string()
            .contains("lgsp dataset import --service khong-co"),
        "{err}"
    );
    let empty = dir.file("empty.csv", b"");
    let (rows, _) = bad_rows(
        store
            .import("x", &empty, "ma", None, &no_progress)
            .unwrap_err(),
    );
    assert!(rows[0].why.contains("needs a header row"));
}

#[test]
fn a_generation_from_before_the_data_file_is_still_served() {
    // Written the way imports wrote before records.data: the text in sled
    // and no `data_file` in the metadata.
    let dir = TestDir::new();
    let store = dir.store();
    let gen_dir = store.root().join("ho-tich").join("gen-1");
    {
        let db = sled::open(&gen_dir).unwrap();
        let records = db.open_tree(RECORDS_TREE).unwrap();
        records
            .insert("001", r#"{"so_dinh_danh":"001","ho_ten":"Nguyễn Thị Ánh"}"#)
            .unwrap();
        let meta = r#"{"key_field":"so_dinh_danh","fields":["so_dinh_danh","ho_ten"],"records":1,"source":"old.csv","imported_at_unix":0}"#;
        db.open_tree(META_TREE)
            .unwrap()
            .insert("meta", meta)
            .unwrap();
        db.flush().unwrap();
    }
    write_current(&store.root().join("ho-tich"), "gen-1").unwrap();
    let dataset = store.open("ho-tich").unwrap();
    assert_eq!(
        dataset.get("001").unwrap().unwrap()["ho_ten"],
        "Nguyễn Thị Ánh"
    );
    assert_eq!(all_pages(&dataset, Query::default()).len(), 1);
}

#[test]
fn a_truncated_data_file_is_reported_as_corrupt_naming_the_record() {
    let dir = TestDir::new();
    let file = dir.file("ho-tich.csv", HO_TICH_CSV.as_bytes());
    let store = dir.store();
    store
        .import("ho-tich", &file, "so_dinh_danh", None, &no_progress)
        .unwrap();
    let data = store.root().join("ho-tich").join("gen-1").join(DATA_FILE);
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let dataset = store.open("ho-tich").unwrap();
    assert!(dataset.get("001").unwrap().is_some());
    let err = dataset.get("003").unwrap_err().to_string();
    assert!(err.contains("\"003\"") && err.contains(DATA_FILE), "{err}");
    // A scan names the last record it could read.
    let err = dataset.query(&Query::default()).unwrap_err().to_string();
    assert!(err.contains("after \"002\""), "{err}");
}

#[test]
fn a_record_too_large_for_a_node_to_send_is_refused_by_line() {
    let dir = TestDir::new();
    let store = dir.store().with_max_record_bytes(1_000);
    let big = "x".repeat(1_000);
    let file = dir.file(
        "ho-so.csv",
        format!("ma,noi_dung\nA1,ngắn\nA2,{big}\nA3,ngắn\n").as_bytes(),
    );
    let (rows, total) = bad_rows(
        store
            .import("ho-so", &file, "ma", None, &no_progress)
            .unwrap_err(),
    );
    assert_eq!(total, 1);
    assert_eq!(rows[0].line, 3);
    assert!(
        rows[0].why.contains("a node sends at most 1000 bytes"),
        "{}",
        rows[0].why
    );
    assert_eq!(store.current_generation("ho-so"), None);
    // The default takes it: 4 MiB less the envelope.
    dir.store()
        .import("ho-so", &file, "ma", None, &no_progress)
        .expect("within the default");
}

#[test]
fn an_unclosed_quote_in_a_semicolon_csv_is_refused_too() {
    let dir = TestDir::new();
    let store = dir.store();
    // Excel in a Vietnamese locale separates with `;`: the quote opening
    // the third field of line 3 is never closed.
    let csv = dir.file(
        "unclosed.csv",
        "ma;ten;xa\n1;An;Xuân La\n2;Bình;\"Tam Đảo\n3;Châu;Yên Lạc\n".as_bytes(),
    );
    let (rows, _) = bad_rows(
        store
            .import("x", &csv, "ma", None, &no_progress)
            .unwrap_err(),
    );
    assert!(
        rows[0]
            .why
            .contains("quote opened on line 3 is never closed"),
        "{rows:?}"
    );
    // A `,` inside an unquoted `;`-separated value opens no quote.
    let good = dir.file("good.csv", "ma;ten\n1;An, \"Bé\"\n".as_bytes());
    assert_eq!(
        store
            .import("y", &good, "ma", None, &no_progress)
            .unwrap()
            .records,
        1
    );
}

#[test]
fn an_unclosed_quote_is_refused_naming_the_line_it_opened_on() {
    let dir = TestDir::new();
    let store = dir.store();
    // The quote on line 3 is never closed: read as CSV, the last field
    // swallows every following line and the field count still matches.
    let csv = dir.file(
        "unclosed.csv",
        "ma,ten,xa\n1,An,Xuân La\n2,Bình,\"Tam Đảo\n3,Châu,Yên Lạc\n4,Dung,Vĩnh Tường\n".as_bytes(),
    );
    let (rows, total) = bad_rows(
        store
            .import("x", &csv, "ma", None, &no_progress)
            .unwrap_err(),
    );
    assert_eq!(total, 1, "{rows:?}");
    assert_eq!(rows[0].line, 3);
    assert!(
        rows[0]
            .why
            .contains("quote opened on line 3 is never closed"),
        "{}",
        rows[0].why
    );
    assert_eq!(store.current_generation("x"), None);

    // A quoted value over several lines, closed, is still one good value.
    let good = dir.file(
        "good.csv",
        "ma,ten\n1,\"An\n\"\"Xuân\"\" La\"\n2,B\n".as_bytes(),
    );
    assert_eq!(
        store
            .import("y", &good, "ma", None, &no_progress)
            .unwrap()
            .records,
        2
    );
}

fn schema_changed(err: DatasetError) -> (String, SchemaChange) {
    match err {
        DatasetError::SchemaChanged { live, change, .. } => (live, *change),
        other => panic!("expected a schema change, got {other}"),
    }
}

#[test]
fn reimport_with_another_key_or_columns_is_refused_and_the_live_data_stays() {
    let dir = TestDir::new();
    let store = dir.store();
    let mut csv = String::from("so_dinh_danh,ho_ten,nam_sinh\n");
    for i in 0..500 {
        csv.push_str(&format!("{i:012},Nguyễn Văn {i},1990\n"));
    }
    let live = dir.file("ho-tich.csv", csv.as_bytes());
    store
        .import("ho-tich", &live, "so_dinh_danh", None, &no_progress)
        .unwrap();

    // Two rows with another key and other columns: refused, by name.
    let other = dir.file("khac.csv", "ma,ten\n1,A\n2,B\n".as_bytes());
    let err = store
        .import("ho-tich", &other, "ma", None, &no_progress)
        .unwrap_err();
    let text = err.to_string();
    let (generation, change) = schema_changed(err);
    assert_eq!(generation, "gen-1");
    assert_eq!(
        change.key,
        Some(("so_dinh_danh".to_owned(), "ma".to_owned()))
    );
    assert_eq!(
        change.columns_removed,
        ["ho_ten", "nam_sinh", "so_dinh_danh"]
    );
    assert_eq!(change.columns_added, ["ma", "ten"]);
    assert!(text.contains("--replace-schema"), "{text}");
    assert!(text.contains("nothing was imported"), "{text}");

    // Same key, a column dropped: refused too.
    let fewer = dir.file("it-cot.csv", "so_dinh_danh,ho_ten\n1,A\n".as_bytes());
    let (_, change) = schema_changed(
        store
            .import("ho-tich", &fewer, "so_dinh_danh", None, &no_progress)
            .unwrap_err(),
    );
    assert_eq!(change.key, None);
    assert_eq!(change.columns_removed, ["nam_sinh"]);

    // Nothing changed: the live data is whole, and no generation was added.
    assert_eq!(
        store.current_generation("ho-tich").as_deref(),
        Some("gen-1")
    );
    assert_eq!(store.open("ho-tich").unwrap().len(), 500);
    assert_eq!(store.generations("ho-tich").unwrap().len(), 1);

    // The same columns in another order are the same schema.
    let reordered = dir.file(
        "dao.csv",
        "nam_sinh,so_dinh_danh,ho_ten\n1991,1,A\n".as_bytes(),
    );
    let report = store
        .import("ho-tich", &reordered, "so_dinh_danh", None, &no_progress)
        .unwrap();
    assert_eq!(report.schema_change, None);

    // Asked for: replaced, and the previous generation kept.
    let report = store
        .import_with(
            "ho-tich",
            &other,
            &ImportOptions {
                key: Some("ma".into()),
                replace_schema: true,
                ..ImportOptions::default()
            },
            &no_progress,
        )
        .unwrap();
    assert_eq!(report.generation, "gen-3");
    assert!(report.schema_change.is_some());
    assert_eq!(report.replaced.unwrap().name, "gen-2");
    assert_eq!(store.open("ho-tich").unwrap().len(), 2);
    let kept: Vec<String> = store
        .generations("ho-tich")
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(kept, ["gen-3", "gen-2"]);
}

#[test]
fn a_json_schema_change_is_refused_and_a_reimport_keeps_the_live_key_and_schema() {
    let dir = TestDir::new();
    let store = dir.store();
    let schema = Schema::from_json(
        r#"{"type":"object","properties":{"ma":{"type":"string"},"tuoi":{"type":"integer"}}}"#,
    )
    .unwrap();
    let v1 = dir.file("v1.csv", "ma,tuoi\nA,30\n".as_bytes());
    store
        .import("nhan-su", &v1, "ma", Some(&schema), &no_progress)
        .unwrap();
    // Another schema: numbers would become strings.
    let as_text = Schema::from_json(
        r#"{"type":"object","properties":{"ma":{"type":"string"},"tuoi":{"type":"string"}}}"#,
    )
    .unwrap();
    let (_, change) = schema_changed(
        store
            .import("nhan-su", &v1, "ma", Some(&as_text), &no_progress)
            .unwrap_err(),
    );
    assert!(change.json_schema);
    assert_eq!(change.to_string(), "JSON Schema changed");
    // The same schema written differently is the same schema.
    let reformatted = Schema::from_json(
        "{ \"properties\": {\"ma\": {\"type\": \"string\"}, \"tuoi\": {\"type\": \"integer\"}},\n  \"type\": \"object\" }",
    )
    .unwrap();
    store
        .import("nhan-su", &v1, "ma", Some(&reformatted), &no_progress)
        .unwrap();
    // Without --key and --schema, the live ones: the row is checked (and
    // typed) by the kept schema.
    let v2 = dir.file("v2.csv", "ma,tuoi\nB,ba mươi\n".as_bytes());
    let (rows, _) = bad_rows(
        store
            .import_with("nhan-su", &v2, &ImportOptions::default(), &no_progress)
            .unwrap_err(),
    );
    assert!(rows[0].why.contains("tuoi"), "{:?}", rows);
    let v3 = dir.file("v3.csv", "ma,tuoi\nB,31\n".as_bytes());
    let report = store
        .import_with("nhan-su", &v3, &ImportOptions::default(), &no_progress)
        .unwrap();
    assert_eq!(report.schema.key, "ma");
    assert_eq!(report.schema_change, None);
    assert_eq!(
        store.open("nhan-su").unwrap().get("B").unwrap().unwrap()["tuoi"],
        31
    );
    // A first import needs a key.
    let err = store
        .import_with("moi", &v3, &ImportOptions::default(), &no_progress)
        .unwrap_err();
    assert!(matches!(err, DatasetError::KeyNeeded(_)), "{err}");
}

#[test]
fn a_dry_run_reports_rows_and_schema_change_and_changes_nothing() {
    let dir = TestDir::new();
    let store = dir.store();
    let v1 = dir.file("v1.csv", "ma,ten\n1,A\n2,B\n3,C\n".as_bytes());
    store.import("x", &v1, "ma", None, &no_progress).unwrap();
    let v2 = dir.file("v2.jsonl", b"{\"id\":\"9\",\"ten\":\"Z\"}\n");
    let report = store
        .import_with(
            "x",
            &v2,
            &ImportOptions {
                key: Some("id".into()),
                dry_run: true,
                ..ImportOptions::default()
            },
            &no_progress,
        )
        .unwrap();
    assert!(report.dry_run);
    assert_eq!(report.records, 1);
    let change = report.schema_change.unwrap();
    assert_eq!(change.key, Some(("ma".to_owned(), "id".to_owned())));
    let replaced = report.replaced.unwrap();
    assert_eq!((replaced.name.as_str(), replaced.records), ("gen-1", 3));
    assert_ne!(report.schema_digest, replaced.schema_digest);
    assert_eq!(
        report.records_changed,
        Some(RecordChanges {
            added: 1,
            removed: 3,
            changed: 0,
            unchanged: 0
        })
    );
    // Same shape: which records change, by key.
    let v3 = dir.file("v3.csv", "ma,ten\n1,A\n2,Bình\n4,D\n".as_bytes());
    let report = store
        .import_with(
            "x",
            &v3,
            &ImportOptions {
                dry_run: true,
                ..ImportOptions::default()
            },
            &no_progress,
        )
        .unwrap();
    assert_eq!(report.schema_change, None);
    assert_eq!(
        report.records_changed.unwrap().to_string(),
        "1 added, 1 removed, 1 changed, 1 unchanged"
    );
    // Nothing changed on disk.
    assert_eq!(store.current_generation("x").as_deref(), Some("gen-1"));
    assert_eq!(store.generations("x").unwrap().len(), 1);
    assert!(!store.root().join("x/gen-2").exists());
    assert_eq!(store.open("x").unwrap().len(), 3);
}

#[test]
fn rollback_restores_the_previous_generation_and_can_be_undone() {
    let dir = TestDir::new();
    let store = dir.store();
    let v1 = dir.file("v1.csv", "ma,ten\n1,Cũ\n".as_bytes());
    let v2 = dir.file("v2.csv", "ma,ten\n1,Mới\n2,Mới hai\n".as_bytes());
    let v3 = dir.file("v3.csv", "ma,ten\n1,Ba\n".as_bytes());
    let err = store.rollback("x", None).unwrap_err();
    assert!(matches!(err, DatasetError::NotFound { .. }), "{err}");
    store.import("x", &v1, "ma", None, &no_progress).unwrap();
    let err = store.rollback("x", None).unwrap_err().to_string();
    assert!(
        err.contains("keeps no generation older than gen-1"),
        "{err}"
    );
    store.import("x", &v2, "ma", None, &no_progress).unwrap();

    let done = store.rollback("x", None).unwrap();
    assert_eq!(
        (done.from.as_str(), done.to.as_str(), done.records),
        ("gen-2", "gen-1", 1)
    );
    let data = store.open("x").unwrap();
    assert_eq!(data.get("1").unwrap().unwrap()["ten"], "Cũ");
    // The rolled-back generation is kept: a rollback --to undoes it.
    let listed = store.generations("x").unwrap();
    assert_eq!(listed.iter().filter(|g| g.live).count(), 1);
    assert!(listed.iter().any(|g| g.name == "gen-1" && g.live));
    let err = store.rollback("x", None).unwrap_err().to_string();
    assert!(err.contains("kept besides gen-1: gen-2"), "{err}");
    store.rollback("x", Some("gen-2")).unwrap();
    assert_eq!(store.open("x").unwrap().len(), 2);

    // The next import keeps what was live (gen-2) and drops the rest.
    let report = store.import("x", &v3, "ma", None, &no_progress).unwrap();
    assert_eq!(report.generation, "gen-3");
    let names: Vec<String> = store
        .generations("x")
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["gen-3", "gen-2"]);
    assert!(!store.root().join("x/gen-1").exists());
}

#[test]
fn generations_list_rows_schema_digest_and_import_time() {
    let dir = TestDir::new();
    let store = dir.store();
    let v1 = dir.file("v1.csv", "ma,ten\n1,A\n2,B\n".as_bytes());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    store.import("x", &v1, "ma", None, &no_progress).unwrap();
    let listed = store.generations("x").unwrap();
    let g = &listed[0];
    assert_eq!((g.name.as_str(), g.live, g.records), ("gen-1", true, 2));
    assert_eq!(g.schema.key, "ma");
    assert_eq!(
        g.schema.columns.as_deref(),
        Some(&["ma".to_owned(), "ten".to_owned()][..])
    );
    assert_eq!(g.schema_digest, g.schema.digest());
    assert_eq!(g.schema_digest.len(), 64);
    assert_eq!(g.source, "v1.csv");
    assert!(g.imported_at_unix >= before);
}

/// `s` decomposed (NFD), as some keyboards and macOS write it.
fn nfd(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfd().collect()
}

#[test]
fn nfd_input_is_stored_nfc_and_found_by_nfc_or_nfd_keys_and_filters() {
    let dir = TestDir::new();
    let store = dir.store();
    let csv = nfd("mã,họ_tên,huyện\nHộ-1,Nguyễn Thị Ánh,Tam Dương\nHộ-2,Trần Văn Đức,Vĩnh Tường\n");
    assert_ne!(csv, "mã,họ_tên");
    let file = dir.file("nfd.csv", csv.as_bytes());
    store.import("x", &file, "mã", None, &no_progress).unwrap();
    let data = store.open("x").unwrap();
    // Stored composed: the NFC key and NFC field names find it.
    assert_eq!(
        data.get_json("Hộ-1").unwrap().unwrap(),
        r#"{"mã":"Hộ-1","họ_tên":"Nguyễn Thị Ánh","huyện":"Tam Dương"}"#
    );
    assert!(data.get(&nfd("Hộ-2")).unwrap().is_some());
    for filter in ["Vĩnh Tường".to_owned(), nfd("Vĩnh Tường")] {
        let page = data
            .query(&Query {
                filters: vec![(nfd("huyện"), filter)],
                ..Query::default()
            })
            .unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].0, "Hộ-2");
    }
    // JSON Lines too, keys and values.
    let jsonl = nfd("{\"mã\":\"Hộ-3\",\"ghi_chú\":[\"Đức\"]}\n");
    let file = dir.file("nfd.jsonl", jsonl.as_bytes());
    store.import("y", &file, "mã", None, &no_progress).unwrap();
    assert_eq!(
        store.open("y").unwrap().get_json("Hộ-3").unwrap().unwrap(),
        r#"{"mã":"Hộ-3","ghi_chú":["Đức"]}"#
    );
}

#[test]
fn excel_csv_with_semicolons_windows_1258_or_utf_16_is_read() {
    let dir = TestDir::new();
    let store = dir.store();
    let expected = r#"{"ma":"1","ho_ten":"Nguyễn Thị Ánh","dia_chi":"Hà Nội, Việt Nam"}"#;
    // `;`-separated UTF-8 with a byte order mark, as Excel saves "CSV UTF-8".
    let semicolons = "\u{FEFF}ma;ho_ten;dia_chi\r\n1;Nguyễn Thị Ánh;Hà Nội, Việt Nam\r\n";
    let file = dir.file("excel.csv", semicolons.as_bytes());
    let report = store.import("a", &file, "ma", None, &no_progress).unwrap();
    assert_eq!(report.read_as.delimiter, b';');
    assert_eq!(
        store.open("a").unwrap().get_json("1").unwrap().unwrap(),
        expected
    );

    // Windows-1258: tone marks are combining characters (ễ = ê + 0xDE,
    // ị = i + 0xF2, Á = A + 0xEC, à = E0, ộ = ô + 0xF2, ệ = ê + 0xF2).
    let cp1258: &[u8] =
        b"ma;ho_ten;dia_chi\r\n1;Nguy\xEA\xDEn Thi\xF2 A\xECnh;\"H\xE0 N\xF4\xF2i, Vi\xEA\xF2t Nam\"\r\n";
    let file = dir.file("cp1258.csv", cp1258);
    let report = store.import("b", &file, "ma", None, &no_progress).unwrap();
    assert_eq!(report.read_as.encoding, TextEncoding::Windows1258);
    assert_eq!(
        store.open("b").unwrap().get_json("1").unwrap().unwrap(),
        expected
    );

    // UTF-16 with a byte order mark, tab-separated (Excel's "Unicode Text").
    let utf16: Vec<u8> = "\u{FEFF}ma\tho_ten\tdia_chi\r\n1\tNguyễn Thị Ánh\tHà Nội, Việt Nam\r\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let file = dir.file("utf16.csv", &utf16);
    let report = store.import("c", &file, "ma", None, &no_progress).unwrap();
    assert_eq!(report.read_as.encoding, TextEncoding::Utf16Le);
    assert_eq!(report.read_as.delimiter, b'\t');
    assert_eq!(
        store.open("c").unwrap().get_json("1").unwrap().unwrap(),
        expected
    );

    // Given, not guessed: a Windows-1258 file read as UTF-8 says what to do.
    let file = dir.file("cp1258-2.csv", cp1258);
    let (rows, _) = bad_rows(
        store
            .import_with(
                "d",
                &file,
                &ImportOptions {
                    key: Some("ma".into()),
                    encoding: Some(TextEncoding::Utf8),
                    ..ImportOptions::default()
                },
                &no_progress,
            )
            .unwrap_err(),
    );
    assert!(rows[0].why.contains("--encoding windows-1258"), "{rows:?}");
    // A wrong separator given: the header is one column, and the error says so.
    let file = dir.file("semi.csv", "ma;ten\n1;A\n".as_bytes());
    let (rows, _) = bad_rows(
        store
            .import_with(
                "e",
                &file,
                &ImportOptions {
                    key: Some("ma".into()),
                    delimiter: Some(b','),
                    ..ImportOptions::default()
                },
                &no_progress,
            )
            .unwrap_err(),
    );
    assert!(rows[0].why.contains("--delimiter ';'"), "{rows:?}");
}

#[test]
fn a_generation_from_before_manifests_is_described_from_its_metadata() {
    let dir = TestDir::new();
    let store = dir.store();
    let v1 = dir.file("v1.csv", "ma,ten\n1,A\n".as_bytes());
    store.import("x", &v1, "ma", None, &no_progress).unwrap();
    let manifest = store.root().join("x/gen-1").join(generation::MANIFEST_FILE);
    std::fs::remove_file(&manifest).unwrap();
    // An import still knows the live key and columns.
    let other = dir.file("other.csv", "id,ten\n1,A\n".as_bytes());
    let (live, change) = schema_changed(
        store
            .import("x", &other, "id", None, &no_progress)
            .unwrap_err(),
    );
    assert_eq!(live, "gen-1");
    assert_eq!(change.key, Some(("ma".to_owned(), "id".to_owned())));
    // Opening it (as a node does) writes the description down.
    drop(store.open("x").unwrap());
    assert!(manifest.is_file());
    assert_eq!(store.generations("x").unwrap()[0].records, 1);
}
