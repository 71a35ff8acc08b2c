//! Packs are self-describing: walking their records reproduces every entry
//! of the chunk index (what `hoard index rebuild` will build on).

mod common;

use hoard_engine::pack::{self, PackId};
use hoard_engine::store::{ChunkLocation, Store};

use common::{mixed_image, Env};

#[test]
fn index_entries_are_recoverable_from_packs_alone() {
    let env = Env::new("64K");
    mixed_image(&env.path("a"), 6 << 20, 3);
    mixed_image(&env.path("b"), 5 << 20, 4);
    env.backup(
        "r",
        &[
            format!("a.img:{}", env.path("a").display()),
            format!("b.img:{}", env.path("b").display()),
        ],
    );
    let store = Store::open(&env.store).unwrap();
    let mut records = 0;
    for path in env.packs() {
        let id = PackId::from_hex(path.file_stem().unwrap().to_str().unwrap()).unwrap();
        for (offset, header) in pack::scan(&path).unwrap() {
            let expected = ChunkLocation {
                pack: id,
                offset,
                record_len: header.record_len() as u32,
                raw_len: header.raw_len,
            };
            assert_eq!(store.index().lookup(&header.digest).unwrap(), Some(expected));
            records += 1;
        }
    }
    assert!(records > 10, "{records} records");
}
