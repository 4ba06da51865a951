//! Replays every committed corpus file through its target, as plain tests:
//! what a libFuzzer run found and fixed stays fixed without cargo-fuzz.

#[test]
fn every_corpus_file_passes_through_its_target_without_a_panic() {
    let mut ran = 0;
    for (name, target) in lgsp_fuzz::TARGETS {
        let dir = lgsp_fuzz::root().join("corpus").join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds for {name}");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            eprintln!("{name}: {}", file.display());
            target(&data);
            ran += 1;
        }
    }
    eprintln!("{ran} corpus files");
}

#[test]
#[ignore = "rewrites fixtures/ and adds seeds to corpus/"]
fn write_seeds() {
    lgsp_fuzz::write_seeds();
}
