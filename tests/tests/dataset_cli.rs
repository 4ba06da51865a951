//! `lgsp dataset` as an operator runs it on a node's data directory: a
//! re-import that would change the data's shape, a dry run, the kept
//! generations and a rollback.

use lgsp_tests::lgsp;
use std::path::Path;
use std::process::Output;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let out = lgsp(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "lgsp {args:?} failed: {stderr}");
    stdout
}

#[test]
fn a_reimport_of_another_shape_is_refused_until_asked_and_can_be_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut csv = String::from("so_dinh_danh,ho_ten\n");
    for i in 0..50 {
        csv.push_str(&format!("{i:012},Nguyễn Văn {i}\n"));
    }
    let live = dir.path().join("ho-tich.csv");
    std::fs::write(&live, csv).unwrap();
    let other = dir.path().join("khac.csv");
    std::fs::write(&other, "ma,ten\n1,A\n2,B\n").unwrap();
    let import = |file: &Path, extra: &[&str]| {
        let mut args = vec![
            "dataset",
            "import",
            "--data-dir",
            p(&data),
            "--service",
            "ho-tich",
            "--file",
            p(file),
        ];
        args.extend_from_slice(extra);
        lgsp(&args)
    };
    let out = import(&live, &["--key", "so_dinh_danh"]);
    assert!(out.status.success(), "{}", text(&out).1);

    // A two-row file with another key: refused, saying why and what to do.
    let out = import(&other, &["--key", "ma"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("key so_dinh_danh → ma") && stderr.contains("--replace-schema"),
        "{stderr}"
    );

    // A dry run shows rows and the change, exits 1 (it would be refused)
    // and changes nothing.
    let out = import(&other, &["--key", "ma", "--dry-run"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("rows:    50 → 2"), "{stdout}");
    assert!(stdout.contains("would replace gen-1"), "{stdout}");
    assert!(
        stdout.contains("records: 2 added, 50 removed, 0 changed, 0 unchanged"),
        "{stdout}"
    );
    assert!(stderr.contains("would be refused"), "{stderr}");
    let out = import(&other, &["--key", "ma", "--dry-run", "--replace-schema"]);
    assert!(out.status.success(), "{}", text(&out).1);

    let listed = ok(&["dataset", "list", "--data-dir", p(&data)]);
    assert_eq!(listed.lines().count(), 2, "a header and gen-1: {listed}");
    assert!(
        listed.contains("gen-1") && listed.contains(" 50 "),
        "{listed}"
    );
    assert!(
        listed.contains("+07:00"),
        "times on the province's clocks: {listed}"
    );

    // Asked for: replaced; gen-1 kept and listed; rollback restores it.
    let out = import(&other, &["--key", "ma", "--replace-schema"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("gen-1 (50 records) is kept"), "{stdout}");
    let listed = ok(&[
        "dataset",
        "list",
        "--data-dir",
        p(&data),
        "--service",
        "ho-tich",
    ]);
    assert!(
        listed.contains("gen-2") && listed.contains("gen-1"),
        "{listed}"
    );
    let stdout = ok(&[
        "dataset",
        "rollback",
        "--data-dir",
        p(&data),
        "--service",
        "ho-tich",
    ]);
    assert!(stdout.contains("now serves gen-1 (50 records)"), "{stdout}");
    let record = ok(&[
        "dataset",
        "show",
        "--data-dir",
        p(&data),
        "--service",
        "ho-tich",
        "--key",
        "000000000007",
    ]);
    assert!(record.contains("Nguyễn Văn 7"), "{record}");
}

#[test]
fn excel_csv_in_windows_1258_with_semicolons_is_read_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // "Hà Nội" with Windows-1258's combining dot below (0xF2).
    let file = dir.path().join("excel.csv");
    std::fs::write(&file, b"ma;dia_chi\r\n1;H\xE0 N\xF4\xF2i\r\n").unwrap();
    let stdout = ok(&[
        "dataset",
        "import",
        "--data-dir",
        p(&data),
        "--service",
        "dia-chi",
        "--file",
        p(&file),
        "--key",
        "ma",
    ]);
    assert!(
        stdout.contains("as windows-1258, ';'-separated"),
        "the guess is shown: {stdout}"
    );
    let record = ok(&[
        "dataset",
        "query",
        "--data-dir",
        p(&data),
        "--service",
        "dia-chi",
        "--filter",
        "dia_chi=Hà Nội",
    ]);
    assert_eq!(record.trim(), r#"{"ma":"1","dia_chi":"Hà Nội"}"#);

    // Told wrong: the error says what to give.
    let out = lgsp(&[
        "dataset",
        "import",
        "--data-dir",
        p(&data),
        "--service",
        "khac",
        "--file",
        p(&file),
        "--key",
        "ma",
        "--encoding",
        "utf-8",
        "--delimiter",
        ",",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--delimiter ';'"), "{stderr}");
}
