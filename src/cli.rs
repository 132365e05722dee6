//! The `aura user` command: builds an admin request from the flags, sends
//! it to the running server, or applies it to the stopped server's
//! database, and prints the result.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::accounts::Accounts;
use crate::admin::{self, AdminRequest, AdminResponse, Target};
use crate::config::{ServeArgs, UserArgs, UserCommand};
use crate::ids::now_ms;
use crate::protocol::UserView;
use crate::store::{Role, Store};

/// Maximum tier or mute duration the CLI accepts: 100 years, in days.
const MAX_DAYS: f64 = 36_500.0;

/// Runs one `aura user` subcommand.
pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    let request = build_request(&args.command)?;
    let response = match admin::send_to_server(&args.data_dir, &request)
        .await
        .context("failed to talk to the running server over its admin socket")?
    {
        Some(response) => response,
        None => apply_offline(&args, request).await?,
    };
    print_response(response)
}

fn build_request(command: &UserCommand) -> anyhow::Result<AdminRequest> {
    let request = match command {
        UserCommand::List => AdminRequest::List,
        UserCommand::Add { name, role } => AdminRequest::Add {
            name: name.clone(),
            password: read_password(name)?,
            role: parse_role(role)?,
        },
        UserCommand::SetRole { name, role } => AdminRequest::SetRole {
            name: name.clone(),
            role: parse_role(role)?,
        },
        UserCommand::SetTier { name, tier, days } => {
            let expires_at = match days {
                Some(days) if !(days.is_finite() && *days > 0.0 && *days <= MAX_DAYS) => {
                    bail!("--days is {days}, expected a number above 0 and at most {MAX_DAYS}; omit it for no end")
                }
                Some(days) => Some(now_ms() + (days * 86_400_000.0) as u64),
                None => None,
            };
            AdminRequest::SetTier {
                name: name.clone(),
                tier: tier.clone(),
                expires_at,
            }
        }
        UserCommand::Mute { name, minutes } => {
            if *minutes > MAX_DAYS as u64 * 1440 {
                bail!("--minutes is {minutes}, expected at most {} (100 years)", MAX_DAYS as u64 * 1440);
            }
            AdminRequest::Mute {
                name: name.clone(),
                until: (*minutes > 0).then(|| now_ms() + minutes * 60_000),
            }
        }
        UserCommand::Disable { name, enable } => AdminRequest::Disable {
            name: name.clone(),
            disabled: !enable,
        },
        UserCommand::ResetPassword { name } => AdminRequest::ResetPassword {
            name: name.clone(),
            password: read_password(name)?,
        },
        UserCommand::Unlock { name } => AdminRequest::Unlock { name: name.clone() },
    };
    Ok(request)
}

/// Opens the stopped server's database and applies the request directly.
async fn apply_offline(args: &UserArgs, request: AdminRequest) -> anyhow::Result<AdminResponse> {
    let mut serve = ServeArgs::for_tests(&args.data_dir);
    serve.tiers = args.tiers.clone();
    let config = Arc::new(serve.validate()?);
    if !config.data_dir.join("db").exists() {
        bail!(
            "no database in {}: start the server once, or pass --data-dir",
            config.data_dir.display()
        );
    }
    let store = Arc::new(Store::open(&config.data_dir, config.cache_bytes)?);
    let sequencer = crate::server::resume_sequencer(&store).await?;
    let accounts = Accounts::load(config, store.clone())?;
    let target = Target {
        accounts: &accounts,
        sequencer: &sequencer,
        hub: None,
        throttle: None,
    };
    let response = admin::execute(&target, request).await;
    store.flush().await?;
    Ok(response)
}

fn print_response(response: AdminResponse) -> anyhow::Result<()> {
    match response {
        AdminResponse::Users { users } => {
            println!("{:<20} {:<32} {:<10} {:<10} {:<17} {:<17} state", "id", "name", "role", "tier", "tier ends", "muted until");
            for user in users {
                print_user(&user);
            }
            Ok(())
        }
        AdminResponse::User { user } => {
            print_user(&user);
            Ok(())
        }
        AdminResponse::Backup { .. } => bail!("the server returned a backup report for a user command: upgrade aura so that client and server match"),
        AdminResponse::Unlocked { name, unlocked: true } => {
            println!("{name}: login lock cleared");
            Ok(())
        }
        AdminResponse::Unlocked { name, unlocked: false } => {
            println!("{name}: no failed logins recorded, nothing to clear");
            Ok(())
        }
        AdminResponse::Error { error } => bail!("{error}"),
    }
}

fn print_user(user: &UserView) {
    let time = |ms: Option<u64>| ms.map_or("-".to_string(), format_utc);
    println!(
        "{:<20} {:<32} {:<10} {:<10} {:<17} {:<17} {}",
        user.id,
        user.name,
        user.role.as_str(),
        user.tier,
        time(user.tier_expires_at),
        time(user.muted_until),
        if user.disabled { "disabled" } else { "enabled" }
    );
}

fn parse_role(text: &str) -> anyhow::Result<Role> {
    Role::parse(text).with_context(|| format!("role {text:?} is invalid: expected member, moderator or admin"))
}

/// Reads a password from a prompt without echo, or from the first line of
/// standard input when it is not a terminal.
fn read_password(name: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {name}: "))?;
        let second = rpassword::prompt_password("Repeat the password: ")?;
        if first != second {
            bail!("the passwords differ: try again");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("failed to read the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Formats ms since the Unix epoch as `YYYY-MM-DD HH:MMZ` in UTC.
fn format_utc(ms: u64) -> String {
    let minutes = ms / 60_000;
    let (days, minute_of_day) = (minutes / 1440, minutes % 1440);
    let (year, month, day) = civil_date(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}Z", minute_of_day / 60, minute_of_day % 60)
}

/// The (year, month, day) of a day counted from 1970-01-01, by Howard
/// Hinnant's civil-from-days algorithm.
pub(crate) fn civil_date(days: u64) -> (i64, i64, i64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::format_utc;

    #[test]
    fn format_utc_epoch() {
        assert_eq!(format_utc(0), "1970-01-01 00:00Z");
    }

    #[test]
    fn format_utc_leap_day() {
        // 2024-02-29 12:34 UTC
        assert_eq!(format_utc(1_709_210_040_000), "2024-02-29 12:34Z");
    }
}
