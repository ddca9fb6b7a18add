//! The read plan of one unit: which requests read all of its points. Adjacent points of one
//! register kind are coalesced into one request within the protocol maximum (125 registers,
//! 2000 bits), bridging gaps up to the link's `max_gap`; addresses where a block must start
//! (learnt from exception 02 on a bridged gap) are never bridged.
//!
//! Pure planning: no I/O, no clocks. The engine's link task executes the plan and feeds back the
//! splits.

use std::collections::BTreeSet;

use super::profile::{Profile, RegKind};

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub kind: RegKind,
    pub start: u16,
    pub count: u16,
    /// Indices into the profile's points.
    pub points: Vec<usize>,
}

impl Block {
    /// Whether the block reads registers that belong to no point.
    pub fn bridges_gap(&self, profile: &Profile) -> bool {
        let covered: u32 = {
            let mut addrs = BTreeSet::new();
            for &i in &self.points {
                if let Some(p) = profile.points.get(i) {
                    for a in u32::from(p.address)..p.end() {
                        addrs.insert(a);
                    }
                }
            }
            u32::try_from(addrs.len()).unwrap_or(u32::MAX)
        };
        covered < u32::from(self.count)
    }

    /// The boundaries that split this block into its contiguous runs (used after exception 02);
    /// a contiguous block yields a boundary at every point so that one bad address costs one
    /// point only.
    pub fn split_points(&self, profile: &Profile) -> Vec<(RegKind, u16)> {
        let bridges = self.bridges_gap(profile);
        let mut out = Vec::new();
        let mut end: Option<u32> = None;
        for &i in &self.points {
            let Some(p) = profile.points.get(i) else {
                continue;
            };
            if let Some(e) = end
                && u32::from(p.address) >= e
                && (!bridges || u32::from(p.address) > e)
            {
                out.push((self.kind, p.address));
            }
            end = Some(end.map_or(p.end(), |e| e.max(p.end())));
        }
        out
    }
}

/// Plans the reads of `points` (indices into `profile.points`).
pub fn plan(
    profile: &Profile,
    points: impl IntoIterator<Item = usize>,
    max_gap: u16,
    boundaries: &BTreeSet<(RegKind, u16)>,
) -> Vec<Block> {
    let mut items: Vec<(RegKind, u16, u32, usize)> = points
        .into_iter()
        .filter_map(|i| {
            profile
                .points
                .get(i)
                .map(|p| (p.kind, p.address, p.end(), i))
        })
        .collect();
    items.sort();
    let mut blocks: Vec<Block> = Vec::new();
    let mut cur_end: u32 = 0;
    for (kind, addr, end, i) in items {
        if let Some(b) = blocks.last_mut()
            && b.kind == kind
        {
            let start = u32::from(b.start);
            let fits = end - start <= u32::from(profile.max_read(kind));
            let close = u32::from(addr) <= cur_end + u32::from(max_gap);
            let split_here = u32::from(addr) >= cur_end && boundaries.contains(&(kind, addr));
            if fits && close && !split_here {
                cur_end = cur_end.max(end);
                b.count = u16::try_from(cur_end - start).unwrap_or(u16::MAX);
                b.points.push(i);
                continue;
            }
        }
        cur_end = end;
        blocks.push(Block {
            kind,
            start: addr,
            count: u16::try_from(end - u32::from(addr)).unwrap_or(1),
            points: vec![i],
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_read_limit_below_the_protocols_splits_the_block() {
        let mut t = String::from("name = \"t\"\nmax_read_registers = 4\n");
        for i in 0..3 {
            t.push_str(&format!(
                "[[points]]\nname=\"p{i}\"\nkind=\"input\"\naddress={}\ntype=\"f32\"\n",
                i * 2
            ));
        }
        let p = Profile::parse(&t).unwrap();
        let blocks = plan(&p, 0..3, 8, &BTreeSet::new());
        let shape: Vec<(u16, u16)> = blocks.iter().map(|b| (b.start, b.count)).collect();
        assert_eq!(shape, vec![(0, 4), (4, 2)]);
        assert!(Profile::parse("name = \"t\"\nmax_read_registers = 126\n").is_err());
    }

    fn profile(points: &[(&str, u16, &str)]) -> Profile {
        let mut t = String::from("name = \"t\"\n");
        for (i, (kind, addr, ty)) in points.iter().enumerate() {
            t.push_str(&format!(
                "[[points]]\nname=\"p{i}\"\nkind=\"{kind}\"\naddress={addr}\ntype=\"{ty}\"\n"
            ));
        }
        Profile::parse(&t).unwrap()
    }

    #[test]
    fn adjacent_points_coalesce_and_small_gaps_are_bridged() {
        let p = profile(&[
            ("holding", 0, "u16"),
            ("holding", 1, "u32"),
            ("holding", 5, "u16"),
            ("holding", 40, "u16"),
            ("input", 0, "u16"),
            ("coil", 3, "bool"),
            ("coil", 9, "bool"),
        ]);
        let b = plan(&p, 0..p.points.len(), 8, &BTreeSet::new());
        let shape: Vec<_> = b.iter().map(|b| (b.kind, b.start, b.count)).collect();
        assert_eq!(
            shape,
            vec![
                (RegKind::Coil, 3, 7),
                (RegKind::Input, 0, 1),
                (RegKind::Holding, 0, 6),
                (RegKind::Holding, 40, 1),
            ]
        );
    }

    #[test]
    fn blocks_never_exceed_the_protocol_maximum() {
        let pts: Vec<_> = (0..300u16).map(|a| ("holding", a, "u16")).collect();
        let p = profile(&pts);
        let b = plan(&p, 0..p.points.len(), 0, &BTreeSet::new());
        assert_eq!(
            b.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![125, 125, 50]
        );
        let bits: Vec<_> = (0..2500u16).map(|a| ("coil", a, "bool")).collect();
        let p = profile(&bits);
        let b = plan(&p, 0..p.points.len(), 0, &BTreeSet::new());
        assert_eq!(
            b.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![2000, 500]
        );
    }

    #[test]
    fn a_learnt_boundary_splits_a_bridged_gap_into_its_runs() {
        let p = profile(&[
            ("holding", 0, "u16"),
            ("holding", 1, "u16"),
            ("holding", 4, "u16"),
            ("holding", 5, "u16"),
        ]);
        let b = plan(&p, 0..4, 8, &BTreeSet::new());
        assert_eq!(b.len(), 1);
        assert!(b[0].bridges_gap(&p));
        let splits: BTreeSet<_> = b[0].split_points(&p).into_iter().collect();
        assert_eq!(splits, BTreeSet::from([(RegKind::Holding, 4)]));
        let b = plan(&p, 0..4, 8, &splits);
        let shape: Vec<_> = b.iter().map(|b| (b.start, b.count)).collect();
        assert_eq!(shape, vec![(0, 2), (4, 2)]);
        // A contiguous run that still fails splits at every point.
        let more: BTreeSet<_> = b[0].split_points(&p).into_iter().collect();
        assert_eq!(more, BTreeSet::from([(RegKind::Holding, 1)]));
    }

    #[test]
    fn masked_points_sharing_a_register_stay_in_one_block() {
        let p = Profile::parse(
            "name=\"t\"\n[[points]]\nname=\"a\"\nkind=\"holding\"\naddress=1\ntype=\"u16\"\nmask=0xF0\n\
             [[points]]\nname=\"b\"\nkind=\"holding\"\naddress=1\ntype=\"u16\"\nmask=0x0F\n",
        )
        .unwrap();
        let b = plan(&p, 0..2, 0, &BTreeSet::new());
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].start, b[0].count), (1, 1));
        assert!(b[0].split_points(&p).is_empty());
    }
}
