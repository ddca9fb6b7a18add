//! Where each configured unit sits in its device's register space: the unit's profile moved to its
//! virtual address (VA) or base offset, and the check that units sharing a slave id on one link
//! never overlap.
//!
//! These are methods of the config's [`Config`] and [`Unit`], defined here because they need the
//! profiles: the config stays below the Modbus engine and never imports it.

use crate::config::{Config, Problem, Unit};

use super::profile::{Profile, ProfileRegistry};

impl Config {
    /// Checks the units against their profiles: a VA only on a profile with virtual addresses,
    /// addresses that stay below 65536, and units sharing a slave id on a link whose registers
    /// (points and command writes, per table) do not overlap. Every problem has its key path.
    pub fn check_profiles(&self, registry: &ProfileRegistry) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let mut placed = Vec::new();
        for (i, u) in self.units.iter().enumerate() {
            let Some(profile) = registry.get(&u.profile) else {
                continue;
            };
            match u.placed(&profile) {
                Ok(p) => placed.push((i, u, p.footprint())),
                Err(e) => problems.push(Problem {
                    path: format!(
                        "units[{i}].{}",
                        if u.va.is_some() { "va" } else { "base_offset" }
                    ),
                    message: e,
                }),
            }
        }
        for (n, (j, b, fb)) in placed.iter().enumerate() {
            for (i, a, fa) in placed.iter().take(n) {
                if a.link != b.link || a.slave != b.slave {
                    continue;
                }
                let clash = fb.iter().find_map(|&(kb, sb, wb)| {
                    fa.iter().find_map(|&(ka, sa, wa)| {
                        let (lo, hi) = (
                            u32::from(sa.max(sb)),
                            (u32::from(sa) + u32::from(wa)).min(u32::from(sb) + u32::from(wb)),
                        );
                        (ka == kb && lo < hi).then_some((kb, lo))
                    })
                });
                if let Some((kind, at)) = clash {
                    problems.push(Problem {
                        path: format!("units[{j}]"),
                        message: format!(
                            "unit `{}` overlaps unit `{}` (units[{i}]) on link `{}` slave {} at {} register {at}; give them different `va` or `base_offset`",
                            b.id,
                            a.id,
                            b.link,
                            b.slave,
                            kind.as_str()
                        ),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl Unit {
    /// The unit's profile moved to its VA or base offset.
    pub fn placed(&self, profile: &Profile) -> Result<Profile, String> {
        let offset = match self.va {
            Some(va) => profile.va_offset(va)?,
            None => 0,
        };
        let offset = offset
            .checked_add(self.base_offset)
            .ok_or_else(|| "VA and base_offset together pass 65535".to_string())?;
        profile.shifted(offset)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn any_profile(_: &str) -> bool {
        true
    }

    const GOOD: &str = r#"
[site]
id = "s-1"
gateway = "gw-1"

[[links]]
name = "bus1"
kind = "tcp"
address = "127.0.0.1:5020"

[[units]]
id = "gen-1"
link = "bus1"
slave = 3
profile = "dse-gencomm"
"#;

    fn hvac(id: &str, slave: u8, place: &str) -> String {
        format!(
            "\n[[units]]\nid = \"{id}\"\nlink = \"bus1\"\nslave = {slave}\nprofile = \"coolmaster-va\"\n{place}\n"
        )
    }

    #[test]
    fn indoor_units_share_a_gateway_slave_id_at_distinct_vas_and_overlaps_are_refused_with_key_paths()
     {
        let reg = ProfileRegistry::builtin().unwrap();
        let ok = format!(
            "{GOOD}{}{}{}",
            hvac("ac-1", 7, "va = 1"),
            hvac("ac-2", 7, "va = 2"),
            hvac("ac-3", 7, "va = 17")
        );
        let c = Config::parse(&ok, Path::new("/"), &any_profile).unwrap();
        assert_eq!(c.check_profiles(&reg), Ok(()));
        assert_eq!(c.units[2].va, Some(2));

        // Two units at the same VA overlap; VA 0 does not exist; a VA on a profile without VAs.
        let bad = format!(
            "{GOOD}{}{}{}{}",
            hvac("ac-1", 7, "va = 1"),
            hvac("ac-2", 7, "va = 1"),
            hvac("ac-3", 8, "va = 0"),
            "\n[[units]]\nid = \"gen-2\"\nlink = \"bus1\"\nslave = 9\nprofile = \"dse-gencomm\"\nva = 2\n"
        );
        let c = Config::parse(&bad, Path::new("/"), &any_profile).unwrap();
        let e = c.check_profiles(&reg).unwrap_err();
        let shown: Vec<(String, String)> = e.into_iter().map(|p| (p.path, p.message)).collect();
        assert_eq!(
            shown,
            vec![
                (
                    "units[3].va".to_string(),
                    "VA 0 does not exist in profile `coolmaster-va` (VAs start at 1)".to_string()
                ),
                (
                    "units[4].va".to_string(),
                    "profile `dse-gencomm` has no virtual addresses (no `va_first`/`va_stride`)"
                        .to_string()
                ),
                (
                    "units[2]".to_string(),
                    "unit `ac-2` overlaps unit `ac-1` (units[1]) on link `bus1` slave 7 at discrete register 16; give them different `va` or `base_offset`".to_string()
                ),
            ]
        );

        // Sharing a slave id needs every unit there to declare its place.
        let unplaced = format!("{GOOD}{}{}", hvac("ac-1", 7, "va = 1"), hvac("ac-2", 7, ""));
        let e = Config::parse(&unplaced, Path::new("/"), &any_profile).unwrap_err();
        assert_eq!(e.problems[0].path, "units[2].slave");
        assert!(
            e.problems[0]
                .message
                .contains("must each set `va` or `base_offset`")
        );
    }
}
